# Shared by up.sh and down.sh: names, addresses and ports of the real node.
fail() { echo "real-node: FAILED: $*" >&2; exit 1; }
kubernetes_version="${KUBERNETES_VERSION:-v1.34.4}"
# Present while a real node is up; holds its DIR (one real node per machine: kubelet's ports, the bridge).
real_node_claim=/run/spire-csi-real-node
pod_subnet="${POD_SUBNET:-10.244.77.0/24}"
pod_gateway="${pod_subnet%.*}.1"
bridge=spirecsi0
chain=SPIRE-CSI-NODE
etcd_port=23790
apiserver_port=16443
containerd_socket="$dir/containerd/containerd.sock"
kubelet_root="$dir/kubelet"

# ensure_packages [COMMAND:]PACKAGE...: see scripts/ensure-packages.sh.
ensure_packages() { bash "$(dirname "${BASH_SOURCE[0]}")/../ensure-packages.sh" "$@"; }

# iptables_chains: "<command> <table> <chain>" for every user chain, IPv4 and IPv6.
iptables_chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle; do
      "$cmd" -t "$table" -S 2>/dev/null | awk -v c="$cmd" -v t="$table" '$1 == "-N" {print c, t, $2}'
    done
  done
}

# start NAME COMMAND...: in its own process group, output appended to DIR/NAME.log, PID in DIR/pids.
start() {
  local name="$1"
  shift
  setsid "$@" >>"$dir/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$dir/pids"
}

# start_kubelet KUBELET_BINARY NODE_NAME
start_kubelet() {
  start kubelet "$1" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$kubelet_root" --hostname-override "$2" --v=2
}

# stop NAME: SIGTERM to its process group (the last one started under NAME), SIGKILL after 10 s.
stop() {
  local pid
  pid="$(awk -v n="$1" '$1 == n {print $2}' "$dir/pids" 2>/dev/null | tail -n 1)"
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  sleep 0.2
}
