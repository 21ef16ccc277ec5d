#!/usr/bin/env bash
# Builds the real peers the e2e suite and benchmarks run against (SPIRE server/agent,
# csi-sanity, spiffe-helper) with `go install` through the Go module proxy, into a cache
# outside the clone keyed by version, so a fresh clone on the same machine reuses them.
# Prints the bin directory on the last line of stdout.
set -euo pipefail

SPIRE_VERSION="${SPIRE_VERSION:-v1.15.3}"
# csi-test with the node-only fix (v5.4.0 calls ControllerGetCapabilities unconditionally; the fix
# landed after it, in master 2f1e2f2a, and is part of v5.6.0; the proxy serves tags, not bare commits).
CSI_TEST_VERSION="${CSI_TEST_VERSION:-v5.6.0}"
SPIFFE_HELPER_VERSION="${SPIFFE_HELPER_VERSION:-v0.11.0}"

cache_root="${SPIRE_CSI_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/peers}"
bin_dir="$cache_root/bin"
mkdir -p "$bin_dir"

if ! command -v go >/dev/null 2>&1; then
  echo "build-peers: Go is not installed (need go >= 1.24 on PATH to build SPIRE and csi-sanity)" >&2
  exit 1
fi

say() { echo "build-peers: $*" >&2; }

# `go install pkg@version` asks the proxy for the module's version list (deprecation check), which
# the proxy here refuses. Instead each peer is built from a throwaway wrapper module in the cache
# that requires the exact version; `replace` lines pin dependencies the proxy does not serve.
# install_peer NAME VERSION CGO MODULE PACKAGE [REPLACE...]
install_peer() {
  local name="$1" version="$2" cgo="$3" module="$4" package="$5"
  shift 5
  local target="$bin_dir/$name-$version"
  if [ -x "$target" ]; then
    say "$name $version cached at $target"
    return
  fi
  say "building $name $version ($package); a cold build takes minutes"
  local work="$cache_root/build/$name-$version"
  rm -rf "$work"
  mkdir -p "$work"
  {
    echo "module spire-csi-driver.local/build/$name"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//')"
    echo
    echo "require $module $version"
    for replacement in "$@"; do echo "replace $replacement"; done
  } > "$work/go.mod"
  local tmp="$target.partial.$$"
  if ! (cd "$work" && CGO_ENABLED="$cgo" GOFLAGS=-mod=mod go build -trimpath -o "$tmp" "$package" >&2); then
    rm -f "$tmp"
    say "FAILED to build $name $version"
    exit 1
  fi
  mv "$tmp" "$target"
  say "$name $version built at $target"
}

# SPIRE v1.15.3 requires ejbca-go-client-sdk v1.1.0, which the module proxy refuses to serve; v1.0.2
# has the API SPIRE's (unused here) EJBCA upstream-authority plugin compiles against.
spire_replace="github.com/Keyfactor/ejbca-go-client-sdk => github.com/Keyfactor/ejbca-go-client-sdk v1.0.2"

want="${*:-spire-server spire-agent csi-sanity spiffe-helper}"
for peer in $want; do
  case "$peer" in
    spire-server) install_peer spire-server "$SPIRE_VERSION" 1 github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-server "$spire_replace" ;;
    spire-agent) install_peer spire-agent "$SPIRE_VERSION" 0 github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-agent "$spire_replace" ;;
    csi-sanity) install_peer csi-sanity "$CSI_TEST_VERSION" 0 github.com/kubernetes-csi/csi-test/v5 github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity ;;
    spiffe-helper) install_peer spiffe-helper "$SPIFFE_HELPER_VERSION" 0 github.com/spiffe/spiffe-helper github.com/spiffe/spiffe-helper/cmd/spiffe-helper ;;
    *) say "unknown peer '$peer' (known: spire-server spire-agent csi-sanity spiffe-helper)"; exit 2 ;;
  esac
done
echo "$bin_dir"
