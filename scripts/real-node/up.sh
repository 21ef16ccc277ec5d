#!/usr/bin/env bash
# Brings up a single-node Kubernetes on this machine, every server on 127.0.0.1, state in DIR:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc and kubelet
# (v1.34.4 from scripts/build-peers.sh), a bridge CNI network that cannot reach off the machine,
# and local images `localhost/pause:1` and `localhost/busybox:1` (Debian busybox-static).
# The fixes it applies are the ones found on these machines (docs/real-node.md).
#
# Usage: up.sh DIR. Writes DIR/kubeconfig, DIR/env (paths and the node name, sourceable) and
# DIR/pids; always pair it with down.sh DIR, which undoes everything even after a failed up.
# Needs root, Linux, cgroup v1 or v2. One real node per machine at a time (a lock in /run).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="$(realpath -m "${1:?usage: up.sh DIR}")"
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || fail "needs root (containerd, kubelet, mounts)"
mkdir -p "$dir"
mkdir "$real_node_claim" 2>/dev/null ||
  fail "a real node is already up on this machine ($(cat "$real_node_claim/dir" 2>/dev/null)); down.sh DIR tears it down"
echo "$dir" >"$real_node_claim/dir"
ls /run/netns 2>/dev/null >"$dir/netns-before" || :
# kubelet adds chains of its own (KUBE-FIREWALL, KUBE-KUBELET-CANARY): down.sh removes the new ones.
iptables_chains >"$dir/iptables-before"

ensure_packages containerd runc etcd:etcd-server ctr:containerd busybox:busybox-static openssl \
  /usr/lib/cni/bridge:containernetworking-plugins iptables skopeo buildah
bin="$(bash "$repo/scripts/build-peers.sh" kubernetes | tail -n 1)"
v="$kubernetes_version"
node_name="$(hostname)"
getent hosts "$node_name" | grep -q '^127\.' ||
  fail "the host name '$node_name' must resolve to 127.0.0.1 (kubectl exec/logs reach kubelet by host name)"

# --- the pod network: a bridge that holds the subnet's gateway, nothing routed elsewhere ---------
ip route show | grep -q "^$pod_subnet " && fail "$pod_subnet is already routed here; pick another POD_SUBNET"
if ! ip link show "$bridge" >/dev/null 2>&1; then
  ip link add "$bridge" type bridge
  echo "$bridge" >"$dir/bridge-created"
fi
ip addr replace "$pod_gateway/${pod_subnet#*/}" dev "$bridge"
ip link set "$bridge" up
# Anything to or from the pod subnet on another interface is dropped (pods have no default route;
# this holds even if one adds one).
iptables -N "$chain" 2>/dev/null || iptables -F "$chain"
iptables -A "$chain" -s "$pod_subnet" ! -o "$bridge" -j DROP
iptables -A "$chain" -d "$pod_subnet" ! -o "$bridge" -j DROP
for hook in OUTPUT FORWARD; do iptables -C "$hook" -j "$chain" 2>/dev/null || iptables -I "$hook" 1 -j "$chain"; done
iptables -C INPUT -s "$pod_subnet" ! -i "$bridge" -j DROP 2>/dev/null || iptables -I INPUT 1 -s "$pod_subnet" ! -i "$bridge" -j DROP
route="$(ip route get "${pod_subnet%.*}.2")"
case "$route" in
  *" dev $bridge "*) ;;
  *) fail "a pod IP would not leave through $bridge: $route" ;;
esac
mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
cat >"$dir/cni/net.d/10-spire-csi.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "spire-csi-node",
  "plugins": [
    { "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": false,
      "ipam": { "type": "host-local", "dataDir": "$dir/cni/ipam",
                "ranges": [[{ "subnet": "$pod_subnet", "gateway": "$pod_gateway" }]] } },
    { "type": "loopback" }
  ]
}
EOF

# --- certificates -------------------------------------------------------------------------------
pki="$dir/pki"
mkdir -p "$pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=spire-csi-node-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
# cert NAME SUBJECT [SAN]
cert() {
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  local ext="$pki/$1.ext"
  : >"$ext"
  [ -n "${3:-}" ] && echo "subjectAltName=$3" >"$ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$ext" -out "$pki/$1.crt" 2>/dev/null
}
cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.96.0.1"
cert admin "/O=system:masters/CN=admin"
cert kubelet-serving "/CN=$node_name" "DNS:$node_name,IP:127.0.0.1"
cert kubelet-client "/O=system:nodes/CN=system:node:$node_name"
# The SPIRE agent's k8s workload attestor reads pods from the kubelet's secure port with this.
cert spire-agent "/CN=spire-agent"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# kubeconfig NAME CERT
kubeconfig() {
  cat >"$dir/$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: node, cluster: {server: "https://127.0.0.1:$apiserver_port", certificate-authority: "$pki/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}}]
contexts: [{name: c, context: {cluster: node, user: u}}]
current-context: c
EOF
}
kubeconfig kubeconfig admin
kubeconfig kubelet.kubeconfig kubelet-client

: >"$dir/pids"
# wait_for WHAT SECONDS COMMAND...
wait_for() {
  local what="$1" seconds="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what did not come up within ${seconds}s (logs in $dir)"
    sleep 0.5
  done
}

# --- etcd, control plane --------------------------------------------------------------------------
start etcd etcd --name node --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "node=http://127.0.0.1:$((etcd_port + 1))"
start kube-apiserver "$bin/kube-apiserver-$v" --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$apiserver_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" --authorization-mode Node,RBAC \
  --endpoint-reconciler-type none --allow-privileged=true --service-cluster-ip-range 10.96.0.0/24 \
  --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
  --kubelet-preferred-address-types Hostname --kubelet-certificate-authority "$pki/ca.crt"
k() { "$bin/kubectl-$v" --kubeconfig "$dir/kubeconfig" "$@"; }
wait_for kube-apiserver 90 k get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager-$v" --kubeconfig "$dir/kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --controllers '*,-nodeipam,-nodelifecycle,-service,-route,-cloud-node-lifecycle,-persistentvolume-binder,-attachdetach'
start kube-scheduler "$bin/kube-scheduler-$v" --kubeconfig "$dir/kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false

# --- containerd ---------------------------------------------------------------------------------
mkdir -p "$dir/containerd"
cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$containerd_socket"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:1"
  # root here lacks CAP_SYS_RESOURCE: kubelet's oom_score_adj -998 for sandboxes fails runc create.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
start containerd containerd --config "$dir/containerd/config.toml"
wait_for containerd 30 ctr --address "$containerd_socket" version

# --- images: pause and busybox from Debian's busybox-static, the sandbox image by its exact name --
images="$dir/images"
mkdir -p "$images"
# image_from_busybox NAME ENTRYPOINT_JSON
image_from_busybox() {
  local container mnt
  container="$(buildah from scratch)"
  mnt="$(buildah mount "$container")"
  mkdir -p "$mnt/bin" "$mnt/tmp" "$mnt/etc"
  cp "$(command -v busybox)" "$mnt/bin/busybox"
  chroot "$mnt" /bin/busybox --install -s /bin
  echo "root:x:0:0:root:/root:/bin/sh" >"$mnt/etc/passwd"
  echo "root:x:0:" >"$mnt/etc/group"
  buildah umount "$container" >/dev/null
  buildah config --entrypoint "$2" --cmd '[]' "$container"
  buildah commit --quiet --rm "$container" "localhost/$1:1" >/dev/null
  skopeo copy --quiet "containers-storage:localhost/$1:1" "docker-archive:$images/$1.tar:localhost/$1:1"
  ctr --address "$containerd_socket" -n k8s.io images import --no-unpack=false "$images/$1.tar" >/dev/null
}
# The sandbox's process must exit on SIGTERM (busybox sh as PID 1 ignores it by default).
image_from_busybox pause '["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]'
image_from_busybox busybox '["/bin/sh"]'

# --- kubelet ------------------------------------------------------------------------------------
mkdir -p "$kubelet_root"
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://$containerd_socket
imageServiceEndpoint: unix://$containerd_socket
# Small disk and no registry to pull from again: no eviction, no image GC.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
start_kubelet "$bin/kubelet-$v" "$node_name"
wait_for "node $node_name Ready" 120 sh -c "'$bin/kubectl-$v' --kubeconfig '$dir/kubeconfig' get node '$node_name' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "ServiceAccount default/default" 60 k -n default get serviceaccount default
wait_for "ConfigMap default/kube-root-ca.crt" 60 k -n default get configmap kube-root-ca.crt

cat >"$dir/env" <<EOF
REAL_NODE_DIR=$dir
KUBECONFIG=$dir/kubeconfig
KUBECTL=$bin/kubectl-$v
KUBELET=$bin/kubelet-$v
NODE_NAME=$node_name
KUBELET_ROOT=$kubelet_root
CONTAINERD_SOCKET=$containerd_socket
POD_SUBNET=$pod_subnet
PKI_DIR=$pki
EOF
echo "real-node: up in $SECONDS s ($dir)" >&2
