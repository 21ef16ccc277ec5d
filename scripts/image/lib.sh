# Shared by the image scripts: the cache dir outside the clone and Debian packages on demand.
image_cache="${SPIRE_CSI_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/images}"

# ensure_packages [COMMAND:]PACKAGE...: see scripts/ensure-packages.sh.
ensure_packages() { bash "$(dirname "${BASH_SOURCE[0]}")/../ensure-packages.sh" "$@"; }
