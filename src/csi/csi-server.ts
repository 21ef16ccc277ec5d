import { chmod, mkdir, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Identity, Node } from "../gen/csi/v1/csi_pb.js";
import type { VolumeManager } from "../volume/volume-manager.js";
import { toGrpcService } from "./grpc-service.js";
import { identityService } from "./identity-service.js";
import { nodeService } from "./node-service.js";

export interface CsiServerOptions {
  socketPath: string;
  version: string;
  nodeId: string;
  kubeletRoot: string;
  volumes: VolumeManager;
  isReady: () => boolean;
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

  await mkdir(dirname(options.socketPath), { recursive: true });
  // A socket left by a killed driver would make bind fail with EADDRINUSE.
  await rm(options.socketPath, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${options.socketPath}`, ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve())),
  );
  // Only root (kubelet and the sidecars) may talk to the driver.
  await chmod(options.socketPath, 0o600);
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
      await rm(options.socketPath, { force: true });
      logger.info("CSI server stopped");
    },
  };
}
