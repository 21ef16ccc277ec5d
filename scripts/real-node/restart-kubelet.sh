#!/usr/bin/env bash
# Restarts the kubelet of the real node in DIR (SIGTERM, then the same command line) and waits
# until it answers its health check. Pods and their volumes stay: kubelet reconstructs them.
# Usage: restart-kubelet.sh DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(realpath -m "${1:?usage: restart-kubelet.sh DIR}")"
. "$here/lib.sh"
. "$dir/env"
stop kubelet
start_kubelet "$KUBELET" "$NODE_NAME"
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:10248/healthz >/dev/null 2>&1 && exit 0
  sleep 0.5
done
fail "kubelet did not answer /healthz within 60 s after its restart (log: $dir/kubelet.log)"
