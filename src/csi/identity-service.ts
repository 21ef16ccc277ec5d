import type { Identity } from "../gen/csi/v1/csi_pb.js";
import type { UnaryImplementation } from "./grpc-service.js";

export const pluginName = "csi.spire.io";

/**
 * GetPluginInfo (registration, and the driver's own /healthz check) and Probe. A node-only plugin:
 * no capabilities.
 *
 * Probe always answers ready. The CSI spec gives `ready: false` one meaning, "still initialising",
 * and the livenessprobe convention turns it into a container restart. The server only listens
 * once start-up (re-adoption) is done, so there is nothing left to initialise; an unreachable
 * SPIRE agent is not a reason to restart the driver (existing volumes keep their files and
 * resume when it returns, and a restart loop would stall rollouts on nodes without an agent).
 * The agent's state is reported by /readyz instead.
 */
export function identityService(options: { version: string }): UnaryImplementation<typeof Identity> {
  return {
    getPluginInfo: async () => ({ name: pluginName, vendorVersion: options.version }),
    getPluginCapabilities: async () => ({ capabilities: [] }),
    probe: async () => ({ ready: true }),
  };
}
