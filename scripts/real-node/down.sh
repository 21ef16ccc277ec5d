#!/usr/bin/env bash
# Tears down what up.sh DIR started, also after a failed or interrupted up: kubelet first (so it
# makes no new containers), every container and sandbox of its containerd, the other processes by
# PID, every mount below DIR (pod volumes, tmpfs of the driver, overlay snapshots), the network
# namespaces the node made, its iptables rules and its bridge; then removes DIR.
# Usage: down.sh DIR. Env KEEP_DIR=1 keeps DIR (logs) after unmounting.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(realpath -m "${1:?usage: down.sh DIR}")"
. "$here/lib.sh"

stop kubelet
if [ -S "$containerd_socket" ]; then
  c() { ctr --address "$containerd_socket" -n k8s.io "$@"; }
  for task in $(c tasks ls -q 2>/dev/null); do c tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1; done
  sleep 0.5
  for task in $(c tasks ls -q 2>/dev/null); do c tasks delete -f "$task" >/dev/null 2>&1; done
  for container in $(c containers ls -q 2>/dev/null); do c containers rm "$container" >/dev/null 2>&1; done
fi
stop containerd
# Shims outlive containerd; they are the ones started for this node's socket.
for pid in $(pgrep -f "containerd-shim.*-address $containerd_socket" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done

# Deepest mounts first; lazily, so a busy one cannot stop the rest.
for _ in 1 2 3; do
  mounts="$(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | uniq)"
  [ -z "$mounts" ] && break
  while read -r mount; do umount -l "$(printf '%b' "$mount")" 2>/dev/null; done <<<"$mounts"
done
if [ -f "$dir/netns-before" ]; then
  for ns in $(ls /run/netns 2>/dev/null); do
    grep -qx "$ns" "$dir/netns-before" || ip netns delete "$ns" 2>/dev/null
  done
fi
for hook in OUTPUT FORWARD; do while iptables -D "$hook" -j "$chain" 2>/dev/null; do :; done; done
iptables -F "$chain" 2>/dev/null && iptables -X "$chain" 2>/dev/null
while iptables -D INPUT -s "$pod_subnet" ! -i "$bridge" -j DROP 2>/dev/null; do :; done
# Chains made while the node was up (kubelet's): the rules jumping to them, then the chains.
if [ -f "$dir/iptables-before" ]; then
  iptables_chains | grep -vxF -f "$dir/iptables-before" | while read -r cmd table name; do
    "$cmd" -t "$table" -S 2>/dev/null | grep -E -- "-j $name( |\$)" | grep -v "^-A $name " | sed 's/^-A /-D /' |
      while read -r rule; do eval "\"$cmd\" -t \"$table\" $rule" 2>/dev/null; done
    "$cmd" -t "$table" -F "$name" 2>/dev/null
    "$cmd" -t "$table" -X "$name" 2>/dev/null
  done
fi
[ -f "$dir/bridge-created" ] && ip link delete "$bridge" 2>/dev/null

if [ "$(cat "$real_node_claim/dir" 2>/dev/null)" = "$dir" ]; then rm -rf "$real_node_claim"; fi
left="$(awk -v d="$dir/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)"
[ "$left" -eq 0 ] || echo "real-node: $left mounts below $dir could not be removed" >&2
[ "${KEEP_DIR:-}" = 1 ] || [ "$left" -ne 0 ] || rm -rf "$dir"
echo "real-node: down ($dir)" >&2
