#!/usr/bin/env bash
# Builds the real peers the e2e suite and benchmarks run against (SPIRE server/agent,
# csi-sanity, spiffe-helper) with `go build` through the Go module proxy, into a cache outside
# the clone keyed by version (bin/<name>-<version>), so a fresh clone on the same machine reuses
# them. Usage: build-peers.sh [peer...] (default: SPIRE, csi-sanity, spiffe-helper; `kubernetes` builds
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl for the real-node suite;
# `promtool` builds Prometheus's rule checker for the chart's alert tests; `helm` builds helm v3). Progress goes to stderr; the bin
# directory is the last line of stdout. Env: SPIRE_CSI_PEER_CACHE overrides the cache root.
set -euo pipefail

SPIRE_VERSION="${SPIRE_VERSION:-v1.15.3}"
# csi-test with the node-only fix (v5.4.0 calls ControllerGetCapabilities unconditionally; the fix
# landed after it, in master 2f1e2f2a, and is part of v5.6.0; the proxy serves tags, not bare commits).
CSI_TEST_VERSION="${CSI_TEST_VERSION:-v5.6.0}"
SPIFFE_HELPER_VERSION="${SPIFFE_HELPER_VERSION:-v0.11.0}"
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl for the real-node
# suite (a DaemonSet needs its controller and the scheduler to get a pod; 1.34 is the newest kubelet that runs
# on cgroup v1 without failCgroupV1: false; see docs/real-node.md).
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.4}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# promtool for `promtool check rules` / `promtool test rules` on the chart's PrometheusRule. The
# Prometheus module tags v3.x releases as v0.3xx.y: v0.310.0 is Prometheus v3.10.0.
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.310.0}"

cache_root="${SPIRE_CSI_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/peers}"
bin_dir="$cache_root/bin"
mkdir -p "$bin_dir"

say() { echo "build-peers: $*" >&2; }

# Go is needed only when something must be built; cached binaries are reused without it.
require_go() {
  if ! command -v go >/dev/null 2>&1; then
    say "FAILED: Go is not installed (need go >= 1.24 on PATH to build $1; binaries go to $bin_dir)"
    exit 1
  fi
}

# `go install pkg@version` asks the proxy for the module's version list (deprecation check), which
# the proxy here refuses. Instead each peer is built from a throwaway wrapper module in the cache
# that requires the exact version; `replace` lines pin dependencies the proxy does not serve.
# PEER_LDFLAGS (optional) is passed to the linker, e.g. to stamp SPIRE's version like its Makefile.
# install_peer NAME VERSION CGO MODULE PACKAGE [REPLACE...]
install_peer() {
  local name="$1" version="$2" cgo="$3" module="$4" package="$5" ldflags="${PEER_LDFLAGS:-}"
  shift 5
  local target="$bin_dir/$name-$version"
  if [ -x "$target" ]; then
    say "$name $version cached at $target"
    return
  fi
  require_go "$name $version"
  local work="$cache_root/build/$name-$version"
  mkdir -p "$cache_root/build"
  # Test files run in parallel and each may call this script: one build per peer at a time.
  local lock_fd
  exec {lock_fd}>"$cache_root/build/$name-$version.lock"
  if command -v flock >/dev/null 2>&1 && ! flock -n "$lock_fd"; then
    say "waiting for another build of $name $version to finish"
    flock "$lock_fd"
  fi
  if [ -x "$target" ]; then
    say "$name $version cached at $target (built meanwhile)"
    exec {lock_fd}>&-
    return
  fi
  say "building $name $version ($package); a cold build takes minutes"
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
  local tmp="$target.partial.$$" started=$SECONDS
  if ! (cd "$work" && CGO_ENABLED="$cgo" GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$tmp" "$package" >&2); then
    rm -f "$tmp"
    say "FAILED to build $name $version (wrapper module: $work/go.mod)"
    exit 1
  fi
  mv "$tmp" "$target"
  exec {lock_fd}>&-
  say "$name $version built at $target in $((SECONDS - started)) s"
}

# k8s.io/kubernetes replaces each of its staging modules (k8s.io/api, client-go, kubelet, ...) with
# ./staging/src/...; a module that requires it must replace each one with the published v0.X.Y
# instead. The list comes from kubernetes' own go.mod. The control plane, kubelet and kubectl are
# built in one go build (shared packages compile once; a cold build takes about 15 min on 2 cores).
install_kubernetes() {
  local version="$KUBERNETES_VERSION" names="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl" name missing=""
  for name in $names; do [ -x "$bin_dir/$name-$version" ] || missing=1; done
  if [ -z "$missing" ]; then
    say "kubernetes $version ($names) cached in $bin_dir"
    return
  fi
  require_go "kubernetes $version"
  local work="$cache_root/build/kubernetes-$version" lock_fd
  mkdir -p "$cache_root/build"
  exec {lock_fd}>"$cache_root/build/kubernetes-$version.lock"
  if command -v flock >/dev/null 2>&1 && ! flock -n "$lock_fd"; then
    say "waiting for another build of kubernetes $version to finish"
    flock "$lock_fd"
  fi
  missing=""
  for name in $names; do [ -x "$bin_dir/$name-$version" ] || missing=1; done
  if [ -z "$missing" ]; then exec {lock_fd}>&-; return; fi
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
  if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
    say "FAILED to download k8s.io/kubernetes@$version through the Go module proxy"
    exit 1
  fi
  local staging_version="v0.${version#v1.}"
  rm -rf "$work"
  mkdir -p "$work/out"
  {
    echo "module spire-csi-driver.local/build/kubernetes"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//')"
    echo
    echo "require k8s.io/kubernetes $version"
    sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$gomod" | while read -r module; do
      echo "replace $module => $module $staging_version"
    done
  } > "$work/go.mod"
  say "building kubernetes $version ($names); a cold build takes about 20 min"
  local pkg="k8s.io/component-base/version" started=$SECONDS minor="${version#v1.}"
  minor="${minor%%.*}"
  local ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  if ! (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o out/ \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl >&2); then
    say "FAILED to build kubernetes $version (wrapper module: $work/go.mod)"
    exit 1
  fi
  for name in $names; do mv "$work/out/$name" "$bin_dir/$name-$version"; done
  rm -rf "$work/out"
  exec {lock_fd}>&-
  say "kubernetes $version built in $((SECONDS - started)) s"
}

# helm v3 (chart tests, real-node suite) is built inside its own module, like its Makefile does:
# the default Kubernetes version (.Capabilities, the chart's kubeVersion) is client-go's v0.X ->
# 1.X; without those ldflags helm assumes v1.20.
install_helm() {
  local version="$HELM_VERSION" target="$bin_dir/helm-$HELM_VERSION" lock_fd
  if [ -x "$target" ]; then say "helm $version cached at $target"; return; fi
  require_go "helm $version"
  mkdir -p "$cache_root/build"
  exec {lock_fd}>"$cache_root/build/helm-$version.lock"
  flock "$lock_fd"
  if [ -x "$target" ]; then exec {lock_fd}>&-; return; fi
  say "building helm $version (cold: a few minutes)"
  local dir
  dir="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then say "FAILED to download helm.sh/helm/v3@$version"; exit 1; fi
  local k8s_minor ldflags pkg
  k8s_minor="$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  if ! (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$target.partial.$$" ./cmd/helm >&2); then
    rm -f "$target.partial.$$"; say "FAILED to build helm $version"; exit 1
  fi
  mv "$target.partial.$$" "$target"
  exec {lock_fd}>&-
}

# SPIRE v1.15.3 requires ejbca-go-client-sdk v1.1.0, whose zip the module proxy refuses (403); v1.0.2
# is served and has the API SPIRE's (unused here) EJBCA upstream-authority plugin compiles against.
# All SPIRE code stays v1.15.3 (`go version -m <binary>` shows the replacement).
spire_replace="github.com/Keyfactor/ejbca-go-client-sdk => github.com/Keyfactor/ejbca-go-client-sdk v1.0.2"
# Like SPIRE's Makefile for a clean release tag: `spire-server --version` prints 1.15.3, not 1.15.3-dev-unk.
spire_ldflags="-X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION#v}"
helper_ldflags="-X github.com/spiffe/spiffe-helper/pkg/version.gittag=${SPIFFE_HELPER_VERSION#v}"
sanity_ldflags="-X main.VERSION=$CSI_TEST_VERSION"
# v0.3MM.P -> 3.MM.P (MM without a leading zero), as promtool --version reports its release.
prometheus_minor="${PROMETHEUS_MODULE_VERSION#v0.3}"
prometheus_release="3.$((10#${prometheus_minor%%.*})).${PROMETHEUS_MODULE_VERSION##*.}"
promtool_ldflags="-X github.com/prometheus/common/version.Version=$prometheus_release"

want="${*:-spire-server spire-agent csi-sanity spiffe-helper}"
for peer in $want; do
  case "$peer" in
    spire-server) PEER_LDFLAGS="$spire_ldflags" install_peer spire-server "$SPIRE_VERSION" 1 github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-server "$spire_replace" ;;
    spire-agent) PEER_LDFLAGS="$spire_ldflags" install_peer spire-agent "$SPIRE_VERSION" 0 github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-agent "$spire_replace" ;;
    csi-sanity) PEER_LDFLAGS="$sanity_ldflags" install_peer csi-sanity "$CSI_TEST_VERSION" 0 github.com/kubernetes-csi/csi-test/v5 github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity ;;
    spiffe-helper) PEER_LDFLAGS="$helper_ldflags" install_peer spiffe-helper "$SPIFFE_HELPER_VERSION" 0 github.com/spiffe/spiffe-helper github.com/spiffe/spiffe-helper/cmd/spiffe-helper ;;
    kubernetes) install_kubernetes ;;
    promtool) PEER_LDFLAGS="$promtool_ldflags" install_peer promtool "$PROMETHEUS_MODULE_VERSION" 0 github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool ;;
    helm) install_helm ;;
    *) say "unknown peer '$peer' (known: spire-server spire-agent csi-sanity spiffe-helper kubernetes promtool helm)"; exit 2 ;;
  esac
done
echo "$bin_dir"
