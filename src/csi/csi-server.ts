import { rm } from "node:fs/promises";
import { Server } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Identity, Node } from "../gen/csi/v1/csi_pb.js";
import type { VolumeManager } from "../volume/volume-manager.js";
import { toGrpcService } from "./grpc-service.js";
import { identityService } from "./identity-service.js";
import { nodeService } from "./node-service.js";
import { bindUnixSocket, stillBound } from "./unix-socket.js";

export interface CsiServerOptions {
  socketPath: string;
  version: string;
  nodeId: string;
  kubeletRoot: string;
  volumes: VolumeManager;
  logger: Logger;
}

/** The CSI gRPC endpoint on a unix socket. Returns a function that shuts it down. */
export async function startCsiServer(options: CsiServerOptions): Promise<{ close(): Promise<void> }> {
  const logger = options.logger.child({ component: "csi" });
  const server = new Server({ "grpc.max_receive_message_length": 4 * 1024 * 1024 });
  const identity = toGrpcService(Identity, identityService(options), logger);
  const node = toGrpcService(Node, nodeService(options), logger);
  server.addService(identity.definition, identity.handlers);
  server.addService(node.definition, node.handlers);

  const bound = await bindUnixSocket(server, options.socketPath);
  logger.info({ socket: options.socketPath }, "CSI server listening");

  return {
    async close() {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      if (await stillBound(bound)) await rm(options.socketPath, { force: true });
      logger.info("CSI server stopped");
    },
  };
}
