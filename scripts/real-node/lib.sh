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

# ensure_packages [COMMAND:]PACKAGE...: apt-get install the Debian packages whose command is missing.
ensure_packages() {
  local missing=() spec cmd
  for spec in "$@"; do
    cmd="${spec%%:*}"
    if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
    missing+=("${spec#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "real-node: installing ${missing[*]} (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}
