#!/usr/bin/env bash
# The same registrations with the SPIRE server CLI instead of spire-controller-manager.
# Point SPIRE_SERVER at your server CLI, e.g.
#   SPIRE_SERVER="kubectl -n spire-server exec spire-server-0 -c spire-server -- /opt/spire/bin/spire-server" ./entries.sh
set -euo pipefail

TRUST_DOMAIN="${TRUST_DOMAIN:-example.org}"
DRIVER_NAMESPACE="${DRIVER_NAMESPACE:-spire-system}"       # Helm release namespace
DRIVER_SA="${DRIVER_SA:-spire-csi-driver}"                 # chart: serviceAccount.name or the release's full name
SPIRE_SERVER="${SPIRE_SERVER:-spire-server}"

# 1. The driver, as an authorized delegate. Entries are parented to a node's agent. With one
#    entry per node, use each agent's SPIFFE ID as -parentID (list them with
#    `spire-server agent list`). With k8s_psat node attestation, a node alias entry that all
#    agents of the cluster share saves that:
#
#      $SPIRE_SERVER entry create -node \
#        -spiffeID spiffe://$TRUST_DOMAIN/k8s-nodes/cluster1 \
#        -selector k8s_psat:cluster:cluster1
#
#    and then a single driver entry with -parentID spiffe://$TRUST_DOMAIN/k8s-nodes/cluster1.
PARENT_ID="${PARENT_ID:-spiffe://$TRUST_DOMAIN/k8s-nodes/cluster1}"

$SPIRE_SERVER entry create \
  -parentID "$PARENT_ID" \
  -spiffeID "spiffe://$TRUST_DOMAIN/spire-csi-driver" \
  -selector "k8s:ns:$DRIVER_NAMESPACE" \
  -selector "k8s:sa:$DRIVER_SA"

# 2. A workload: pods of ServiceAccount "web" in namespace "default". The driver sends
#    k8s:ns, k8s:sa, k8s:pod-uid, k8s:pod-name and k8s:node-name for each pod; an entry
#    matches when all of its selectors are among them, so ns+sa is the usual choice.
$SPIRE_SERVER entry create \
  -parentID "$PARENT_ID" \
  -spiffeID "spiffe://$TRUST_DOMAIN/ns/default/sa/web" \
  -selector k8s:ns:default \
  -selector k8s:sa:web
