#!/usr/bin/env bash
# Builds the driver image from the repository's Dockerfile with buildah (daemonless, from Debian),
# on the locally built node:24-bookworm-slim (build-base.sh), as `docker build .` would: no
# registry pull, host network for npm and apt. npm inside the build trusts the host's CA bundle
# through a read-only bind mount of an npmrc for the build only; nothing of it is baked in
# (the build checks that the image's /usr/local/etc is as empty as the base's).
#
# Usage: build.sh IMAGE_REF [DOCKER_ARCHIVE]   e.g. build.sh ghcr.io/spire-csi-driver/spire-csi-driver:dev /tmp/driver.tar
# With DOCKER_ARCHIVE, also writes the image there (skopeo, docker-archive) for `ctr images import`.
# Extra `buildah bud` arguments can be given in BUILD_ARGS (e.g. "--build-arg CREATED=...").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$here/lib.sh"
image="${1:?usage: build.sh IMAGE_REF [DOCKER_ARCHIVE]}"
archive="${2:-}"
say() { echo "image: $*" >&2; }

# buildah runs the Dockerfile's RUN steps with an OCI runtime, which Debian's buildah only recommends.
ensure_packages buildah skopeo runc
bash "$here/build-base.sh"

ca_bundle="${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/npm"
cp "$ca_bundle" "$work/npm/host-ca.crt"
echo "cafile=/usr/local/etc/host-ca.crt" >"$work/npm/npmrc"

revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
version="$(node -p 'require(process.argv[1]).version' "$repo/package.json")"
started=$SECONDS
say "building $image from $repo/Dockerfile"
# npm reads its global config from <prefix>/etc/npmrc, so the mount goes over /usr/local/etc, which
# exists (empty) in the base image: a mount target that had to be created would be left in the layer.
# --force-rm: a failed step would otherwise leave its working container behind, one per failed build.
buildah bud --quiet --pull=never --network host --layers --force-rm \
  --volume "$work/npm:/usr/local/etc:ro" \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  ${BUILD_ARGS:-} \
  --tag "$image" --file "$repo/Dockerfile" "$repo" >&2
say "built $image in $((SECONDS - started)) s"
check="$(buildah from --pull=never "$image")"
trap 'buildah rm "$check" >/dev/null 2>&1; rm -rf "$work"' EXIT
leftover="$(ls -A "$(buildah mount "$check")/usr/local/etc")"
if [ -n "$leftover" ]; then
  say "FAILED: the build left files of its npmrc mount in the image's /usr/local/etc: $leftover"
  exit 1
fi
if [ -n "$archive" ]; then
  rm -f "$archive"
  skopeo copy --quiet "containers-storage:$image" "docker-archive:$archive:$image" >&2
  say "wrote $archive"
fi
echo "$image"
