import { NodeServiceCapability_RPC_Type as RpcType, type Node } from "../gen/csi/v1/csi_pb.js";
import type { VolumeManager } from "../volume/volume-manager.js";
import type { UnaryImplementation } from "./grpc-service.js";
import { parsePublishRequest, parseUnpublishRequest } from "./publish-request.js";

/**
 * The Node service: publish and unpublish of ephemeral inline volumes. VOLUME_MOUNT_GROUP is
 * advertised so kubelet hands over the pod's fsGroup instead of chowning the files itself.
 * SINGLE_NODE_MULTI_WRITER is not: an inline volume belongs to one pod, and kubelet then sends
 * SINGLE_NODE_WRITER. Stage, stats and expand are not offered and answer UNIMPLEMENTED.
 */
export function nodeService(options: { nodeId: string; kubeletRoot: string; volumes: VolumeManager }): UnaryImplementation<typeof Node> {
  return {
    nodeGetInfo: async () => ({ nodeId: options.nodeId, maxVolumesPerNode: 0n }),
    nodeGetCapabilities: async () => ({
      capabilities: [
        { type: { case: "rpc", value: { type: RpcType.VOLUME_MOUNT_GROUP } } },
      ],
    }),
    nodePublishVolume: async (request) => {
      const spec = parsePublishRequest(request, options.kubeletRoot);
      await options.volumes.publish(spec);
      return {};
    },
    nodeUnpublishVolume: async (request) => {
      const { volumeId, targetPath } = parseUnpublishRequest(request, options.kubeletRoot);
      await options.volumes.unpublish(volumeId, targetPath);
      return {};
    },
  };
}
