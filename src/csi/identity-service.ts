import type { Identity } from "../gen/csi/v1/csi_pb.js";
import type { UnaryImplementation } from "./grpc-service.js";

export const pluginName = "csi.spire.io";

/** GetPluginInfo for node-driver-registrar, Probe for livenessprobe. A node-only plugin: no capabilities. */
export function identityService(options: { version: string; isReady: () => boolean }): UnaryImplementation<typeof Identity> {
  return {
    getPluginInfo: async () => ({ name: pluginName, vendorVersion: options.version }),
    getPluginCapabilities: async () => ({ capabilities: [] }),
    probe: async () => ({ ready: options.isReady() }),
  };
}
