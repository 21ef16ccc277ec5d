# SPIRE agent configuration for csi.spire.io (merge into your agent.conf; SPIRE >= 1.5).
#
# The driver talks to the agent's admin socket (Delegated Identity API). Two settings in the
# `agent` block make that work:
#
#   admin_socket_path     where the agent serves the admin API. Put it in its own host dir,
#                         NOT in the Workload API socket's dir: pods that mount the Workload API
#                         socket dir (e.g. through spiffe-csi) must not reach the admin API.
#                         The driver's chart mounts the host dir `agent.adminSocketDir`
#                         (default /run/spire/agent/sockets/csi.spiffe.io/admin, where the
#                         hardened SPIRE chart puts it; docs/install.md) and dials
#                         <dir>/`agent.adminSocketName`.
#   authorized_delegates  SPIFFE IDs allowed to call the Delegated Identity API. The driver's
#                         registration entry (see clusterspiffeid-driver.yaml / entries.sh)
#                         must give it exactly this ID; otherwise every publish fails with
#                         "the SPIRE agent refused the driver (PermissionDenied ...)".

agent {
  data_dir          = "/run/spire"
  log_level         = "INFO"
  server_address    = "spire-server.spire-server"
  server_port       = "8081"
  trust_domain      = "example.org"

  # Workload API socket (unchanged; shown to make the separation visible).
  socket_path       = "/run/spire/agent-sockets/spire-agent.sock"

  # Admin API for csi.spire.io.
  admin_socket_path = "/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock"
  authorized_delegates = [
    "spiffe://example.org/spire-csi-driver",
  ]
}

plugins {
  # The driver is attested like any pod: by the k8s workload attestor, which gives it the
  # selectors k8s:ns:<release namespace>, k8s:sa:<driver ServiceAccount>, k8s:pod-uid:... .
  # The agent must run with hostPID: true so it can resolve the driver's PID to its pod.
  WorkloadAttestor "k8s" {
    plugin_data {
      # node_name_env = "MY_NODE_NAME"   # as your deployment already sets it
    }
  }
  # NodeAttestor, KeyManager, ... unchanged.
}

# The agent DaemonSet must mount the same host dir the driver mounts:
#
#   containers:
#     - name: spire-agent
#       volumeMounts:
#         - name: spire-admin-socket
#           mountPath: /run/spire/agent/sockets/csi.spiffe.io/admin
#   volumes:
#     - name: spire-admin-socket
#       hostPath:
#         path: /run/spire/agent/sockets/csi.spiffe.io/admin
#         type: DirectoryOrCreate
#
# Do not delete and recreate that directory on agent start (e.g. from an init container): the
# driver's bind mount would keep pointing at the old, empty directory until the driver restarts.
# Removing and recreating the socket file inside it is fine; the driver notices it at once.
