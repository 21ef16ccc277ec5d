# Shared by the image scripts: the cache dir outside the clone and Debian packages on demand.
image_cache="${SPIRE_CSI_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/images}"

# ensure_packages PACKAGE_OR_COMMAND... : apt-get install the Debian packages whose command is missing.
ensure_packages() {
  local missing=() name
  for name in "$@"; do command -v "$name" >/dev/null 2>&1 || missing+=("$name"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "image: installing ${missing[*]} (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}
