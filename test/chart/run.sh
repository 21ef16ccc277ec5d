#!/usr/bin/env bash
# Chart tests for charts/spire-csi-driver.
#
# - builds helm v3 with scripts/build-peers.sh helm (peer cache outside the clone, release ldflags
#   so its default Kubernetes version is the one its client-go was built for);
# - `helm lint --strict` and `helm template` with the default values, test/chart/values-custom.yaml
#   and test/chart/values-no-metrics.yaml;
# - decodes every rendered object strictly against the Kubernetes API types (Go checker in
#   test/chart/checker, unknown or duplicate fields fail) and asserts the fields the driver needs;
# - renders it as the subchart of an umbrella chart with global values;
# - runs `promtool check rules` and `promtool test rules` (test/chart/prometheusrule-test.yaml) on
#   the PrometheusRule (promtool from scripts/build-peers.sh);
# - checks that the schema and the templates reject bad values.
#
# Exits non-zero on any failure. The last line is "chart: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
chart=charts/spire-csi-driver
namespace=spire-system
cache_root="${SPIRE_CSI_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spire-csi-driver/peers}"
bin_dir="$cache_root/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
say() { echo "chart: $*" >&2; }
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }
finish() {
  echo "chart: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

if ! command -v go >/dev/null 2>&1; then
  fail "Go is not installed (need go >= 1.26 on PATH to build helm and the checker)"
  finish
fi
mkdir -p "$bin_dir"

# --- helm -----------------------------------------------------------------------------------
# Built by scripts/build-peers.sh into the peer cache outside the clone (shared with test:node).
helm="$bin_dir/helm-$HELM_VERSION"
if ! HELM_VERSION="$HELM_VERSION" bash scripts/build-peers.sh helm >/dev/null; then
  fail "build helm $HELM_VERSION (scripts/build-peers.sh helm)"
  finish
fi
pass "helm $("$helm" version --template '{{.Version}}')"

# --- checker --------------------------------------------------------------------------------
# Cached by the hash of its sources, so a warm run does not relink it.
checker_hash="$(cat test/chart/checker/go.mod test/chart/checker/go.sum test/chart/checker/*.go | sha256sum | cut -c1-16)"
checker="$bin_dir/chart-checker-$checker_hash"
if [ ! -x "$checker" ]; then
  say "building the manifest checker (cold: about a minute)"
  if (cd test/chart/checker && go build -mod=readonly -trimpath -o "$checker.partial.$$" . >&2); then
    mv "$checker.partial.$$" "$checker"
    # Drop checkers built from older sources.
    find "$bin_dir" -maxdepth 1 -name 'chart-checker-*' ! -name "$(basename "$checker")" -delete
  else
    rm -f "$checker.partial.$$"
    fail "build test/chart/checker"
    finish
  fi
fi
pass "checker built"

# The checker must reject what it claims to reject: an unknown field in a DaemonSet.
cat >"$work/unknown-field.yaml" <<'EOF'
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: x
spec:
  template:
    spec:
      containers:
        - name: c
          image: i:1
          mountPropagation: Bidirectional
EOF
if "$checker" -manifest "$work/unknown-field.yaml" >"$work/unknown-field.out" 2>&1; then
  fail "checker rejects an unknown field (it accepted containers[].mountPropagation)"
elif grep -q 'not ok - document 0 (apps/v1 DaemonSet) decodes strictly.*unknown field' "$work/unknown-field.out"; then
  pass "checker rejects an unknown field (containers[].mountPropagation)"
else
  fail "checker rejects an unknown field for the right reason"; cat "$work/unknown-field.out"
fi

# --- lint, render, check -------------------------------------------------------------------
# scenario NAME CHECKER_FLAGS... -- HELM_FLAGS...
scenario() {
  local name="$1"
  shift
  local checker_flags=()
  while [ "$1" != "--" ]; do checker_flags+=("$1"); shift; done
  shift
  if "$helm" lint --strict "$chart" --namespace "$namespace" "$@" >"$work/$name.lint" 2>&1; then
    pass "$name: helm lint --strict"
  else
    fail "$name: helm lint --strict"; cat "$work/$name.lint"
  fi
  if ! "$helm" template spire-csi-driver "$chart" --namespace "$namespace" "$@" >"$work/$name.yaml" 2>"$work/$name.err"; then
    fail "$name: helm template"; cat "$work/$name.err"
    return
  fi
  pass "$name: helm template"
  local out="$work/$name.check"
  "$checker" -manifest "$work/$name.yaml" -namespace "$namespace" "${checker_flags[@]}" >"$out" 2>&1
  local rc=$?
  local result n m
  result="$(tail -n 1 "$out")"
  n="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' <<<"$result")"
  m="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' <<<"$result")"
  if [ -z "$n" ] || [ -z "$m" ]; then
    fail "$name: checker ran (exit $rc)"; cat "$out"
    return
  fi
  passed=$((passed + n))
  failed=$((failed + m))
  if [ "$rc" -ne 0 ] || [ "$m" -ne 0 ]; then
    echo "$name: checker found problems:"
    grep -v '^ok - ' "$out"
    [ "$m" -eq 0 ] && fail "$name: checker exit status $rc"
  else
    echo "ok - $name: $n object checks"
  fi
}

scenario defaults \
  -kubelet-root /var/lib/kubelet -metrics-port 9809 -want-memory-limit 256Mi -- \
  --set image.tag=test
scenario custom \
  -kubelet-root /var/lib/k0s/kubelet -metrics-port 9900 -health-port 9901 -want-podmonitor \
  -metadata-dir /var/lib/k0s/spire-csi-driver/volumes -agent-socket-dir /run/spire/agent-admin \
  -want-toleration-key dedicated -want-memory-limit 512Mi -want-priority-class platform-node-critical \
  -want-image registry.example.com/spire/spire-csi-driver@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  -want-pull-secrets regcred -want-common-label example.com/cost-center=platform -want-scc -want-selinux-type spc_t \
  -want-extra-env NODE_OPTIONS -want-extra-volume ca-certs -want-selinux-context system_u:object_r:container_file_t:s0:c12,c345 \
  -want-prometheusrule -want-dashboard -- \
  -f test/chart/values-custom.yaml
scenario no-metrics \
  -kubelet-root /var/lib/kubelet -metrics-port 0 -- \
  -f test/chart/values-no-metrics.yaml

# The chart as a subchart of an umbrella chart: global values are accepted (known ones used,
# others ignored) and the strict schema still applies to the subchart's own values.
umbrella="$work/umbrella"
mkdir -p "$umbrella/charts"
cp -r "$chart" "$umbrella/charts/spire-csi-driver"
printf 'apiVersion: v2\nname: platform\nversion: 1.0.0\n' >"$umbrella/Chart.yaml"
cat >"$umbrella/values.yaml" <<'EOF'
global:
  imageRegistry: mirror.example.com
  imagePullSecrets:
    - name: mirror-pull
  commonLabels:
    example.com/stack: identity
  # Another subchart's global; this chart must ignore it.
  storageClass: fast
spire-csi-driver:
  imagePullSecrets:
    - name: regcred
EOF
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")"
if "$helm" template platform "$umbrella" --namespace "$namespace" >"$work/umbrella.yaml" 2>"$work/umbrella.err"; then
  pass "umbrella chart with global values renders"
  "$checker" -manifest "$work/umbrella.yaml" -namespace "$namespace" \
    -want-image "mirror.example.com/spire-csi-driver/spire-csi-driver:$app_version" \
    -want-pull-secrets mirror-pull,regcred -want-common-label example.com/stack=identity >"$work/umbrella.check" 2>&1
  n="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' "$work/umbrella.check")"
  m="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' "$work/umbrella.check")"
  if [ -n "$n" ] && [ "$m" = 0 ]; then
    passed=$((passed + n))
    echo "ok - umbrella: $n object checks"
  else
    fail "umbrella: checker"; grep -v '^ok - ' "$work/umbrella.check"
  fi
else
  fail "umbrella chart with global values renders"; cat "$work/umbrella.err"
fi
if "$helm" template platform "$umbrella" -n "$namespace" --set spire-csi-driver.kubeletDir=/x >"$work/umbrella-typo.out" 2>&1; then
  fail "umbrella: a typo in the subchart's values is still rejected (it rendered)"
elif grep -q "kubeletDir" "$work/umbrella-typo.out"; then
  pass "umbrella: a typo in the subchart's values is still rejected"
else
  fail "umbrella: a typo in the subchart's values is rejected naming it"; cat "$work/umbrella-typo.out"
fi

# A repository that names its registry (values from before image.registry) is used as is.
if "$helm" template spire-csi-driver "$chart" -n "$namespace" --set image.repository=registry.example.com/spire/spire-csi-driver |
  grep -q "image: \"registry.example.com/spire/spire-csi-driver:$app_version\""; then
  pass "a repository with a registry host is not prefixed with image.registry"
else
  fail "a repository with a registry host is not prefixed with image.registry"
fi

# The image tag defaults to the chart's appVersion.
if "$helm" template spire-csi-driver "$chart" -n "$namespace" | grep -q "image: \"ghcr.io/spire-csi-driver/spire-csi-driver:$app_version\""; then
  pass "image tag defaults to appVersion $app_version"
else
  fail "image tag defaults to appVersion $app_version"
fi

# NOTES name what the operator must configure, with the values' names.
# (`helm install --dry-run` wants a cluster and `helm template` skips NOTES.txt: render a copy
# of it, base64-encoded inside an ordinary YAML template.)
cp -r "$chart" "$work/notes-chart"
{
  echo '{{- define "test.notes" -}}'
  cat "$chart/templates/NOTES.txt"
  echo '{{- end -}}'
  echo 'notes: {{ include "test.notes" . | b64enc }}'
} >"$work/notes-chart/templates/notes-copy.yaml"
if "$helm" template spire-csi-driver "$work/notes-chart" -n "$namespace" -f test/chart/values-custom.yaml \
  --show-only templates/notes-copy.yaml >"$work/notes.yaml" 2>&1 &&
  sed -n 's/^notes: //p' "$work/notes.yaml" | base64 -d >"$work/notes.out" &&
  grep -q 'authorized_delegates' "$work/notes.out" &&
  grep -q '"spiffe://prod.example.com/system/spire-csi-driver"' "$work/notes.out" &&
  grep -q 'admin_socket_path = "/run/spire/agent-admin/admin.sock"' "$work/notes.out" &&
  grep -q -- '-selector k8s:sa:csi-spire' "$work/notes.out" &&
  grep -q -- '-spiffeID spiffe://prod.example.com/ns/default/sa/web' "$work/notes.out" &&
  grep -q "kind: ClusterSPIFFEID" "$work/notes.out"; then
  pass "NOTES.txt names admin_socket_path, authorized_delegates and the driver's entry"
else
  fail "NOTES.txt names admin_socket_path, authorized_delegates and the driver's entry"; cat "$work/notes.yaml" "$work/notes.out"
fi

# --- alerts: promtool check rules + promtool test rules ------------------------------------
# The PrometheusRule rendered with the default thresholds, extracted by the checker as a plain
# rule file, and tested with test/chart/prometheusrule-test.yaml (promtool from the peer cache).
prometheus_version="$(sed -n 's/^PROMETHEUS_MODULE_VERSION="\${PROMETHEUS_MODULE_VERSION:-\(.*\)}"$/\1/p' scripts/build-peers.sh)"
promtool_dir="$(bash scripts/build-peers.sh promtool 2>"$work/promtool-build.log" | tail -n 1)"
promtool="$promtool_dir/promtool-$prometheus_version"
if [ ! -x "$promtool" ]; then
  fail "build promtool $prometheus_version (scripts/build-peers.sh promtool)"; cat "$work/promtool-build.log"
else
  mkdir -p "$work/rules"
  if "$helm" template spire-csi-driver "$chart" -n "$namespace" --set prometheusRule.enabled=true >"$work/rules/render.yaml" 2>&1 &&
    "$checker" -manifest "$work/rules/render.yaml" -namespace "$namespace" -want-prometheusrule -extract-rules "$work/rules/rules.yaml" >"$work/rules/check.out" 2>&1; then
    pass "PrometheusRule renders and decodes"
  else
    fail "PrometheusRule renders and decodes"; cat "$work/rules/render.yaml" "$work/rules/check.out"
  fi
  if "$promtool" check rules "$work/rules/rules.yaml" >"$work/rules/promtool-check.out" 2>&1; then
    pass "promtool check rules: $(grep -o '[0-9]* rules found' "$work/rules/promtool-check.out")"
  else
    fail "promtool check rules"; cat "$work/rules/promtool-check.out"
  fi
  cp test/chart/prometheusrule-test.yaml "$work/rules/"
  if "$promtool" test rules "$work/rules/prometheusrule-test.yaml" >"$work/rules/promtool-test.out" 2>&1; then
    pass "promtool test rules: every alert fires when it should and not before"
  else
    fail "promtool test rules"; cat "$work/rules/promtool-test.out"
  fi
fi

# --- examples/ and deploy/spire/ decode strictly too ------------------------------------------
# The attribute keys the driver accepts, from its zod schema (so the list never goes stale).
known_attributes="$(grep -o '"csi\.spire\.io/[a-z0-9-]*":' src/volume/volume-attributes.ts | tr -d '":' | sort -u | paste -sd, -)"
if [ -n "$known_attributes" ]; then
  pass "volume attribute keys read from src/volume/volume-attributes.ts ($(tr ',' '\n' <<<"$known_attributes" | wc -l))"
else
  fail "volume attribute keys read from src/volume/volume-attributes.ts"
fi
for file in examples/*.yaml deploy/spire/*.yaml; do
  out="$work/$(basename "$file").check"
  "$checker" -decode-only -known-attributes "$known_attributes" -manifest "$file" >"$out" 2>&1
  rc=$?
  n="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\1/p' "$out")"
  m="$(sed -n 's/^RESULT passed=\([0-9]*\) failed=\([0-9]*\)$/\2/p' "$out")"
  if [ -z "$n" ] || [ -z "$m" ]; then
    fail "$file: checker ran (exit $rc)"; cat "$out"
    continue
  fi
  passed=$((passed + n))
  failed=$((failed + m))
  if [ "$m" -ne 0 ] || [ "$rc" -ne 0 ]; then
    echo "$file: checker found problems:"; grep -v '^ok - ' "$out"
  else
    echo "ok - $file: $n checks"
  fi
done
if bash -n deploy/spire/entries.sh; then pass "deploy/spire/entries.sh parses"; else fail "deploy/spire/entries.sh parses"; fi

# --- values that must be rejected ----------------------------------------------------------
# expect_reject DESCRIPTION PATTERN HELM_FLAGS...
expect_reject() {
  local what="$1" pattern="$2"
  shift 2
  if "$helm" template spire-csi-driver "$chart" -n "$namespace" "$@" >"$work/reject.out" 2>&1; then
    fail "rejects $what (it rendered)"
  elif grep -qE -- "$pattern" "$work/reject.out"; then
    pass "rejects $what"
  else
    fail "rejects $what with a message matching /$pattern/"; cat "$work/reject.out"
  fi
}
expect_reject "an unknown top-level key" "additional properties 'kubeletDir' not allowed|kubeletDir" --set kubeletDir=/x
expect_reject "an unknown nested key" "additional properties 'socket' not allowed|socket" --set agent.socket=/x
expect_reject "volumeBacking other than tmpfs|directory" "volumeBacking" --set volumeBacking=nfs
expect_reject "a relative kubeletRoot" "kubeletRoot" --set kubeletRoot=var/lib/kubelet
expect_reject "a bad tmpfsSize" "tmpfsSize" --set tmpfsSize=4MB
expect_reject "a bad publishTimeout" "publishTimeout" --set publishTimeout=30
expect_reject "agent.maxCalls above the driver's 256" "maxCalls" --set agent.maxCalls=300
expect_reject "a bad agent.jwtFetchTimeout" "jwtFetchTimeout" --set agent.jwtFetchTimeout=30
expect_reject "rollingUpdate.maxSurge (a second driver on the node could only wait for the lock)" "maxSurge" --set updateStrategy.rollingUpdate.maxSurge=1
expect_reject "an image digest that is not sha256:<64 hex>" "digest" --set image.digest=latest
expect_reject "a malformed seLinuxContext" "seLinuxContext" --set seLinuxContext=container_file_t
expect_reject "an unknown seLinuxOptions key" "typo" --set seLinuxOptions.typo=x
expect_reject "a delegate SPIFFE ID outside the trust domain" "must be in spire.trustDomain" \
  --set spire.trustDomain=example.org --set spire.delegateSpiffeId=spiffe://other.org/spire-csi-driver
expect_reject "health.port equal to metrics.port" "health.port and metrics.port must differ" \
  --set health.port=9809 --set metrics.port=9809
expect_reject "an unknown sidecars key (the chart has no sidecars)" "additional properties 'sidecars' not allowed|sidecars" \
  --set sidecars.livenessProbe.healthPort=9808
expect_reject "podMonitor without metrics" "podMonitor.enabled needs metrics.enabled" \
  --set podMonitor.enabled=true --set metrics.enabled=false
expect_reject "prometheusRule without metrics" "prometheusRule.enabled needs metrics.enabled" \
  --set prometheusRule.enabled=true --set metrics.enabled=false

finish
