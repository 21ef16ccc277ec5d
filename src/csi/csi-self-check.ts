import { Client, credentials, status, type ServiceError } from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { GetPluginInfoRequestSchema, GetPluginInfoResponseSchema, type GetPluginInfoRequest } from "../gen/csi/v1/csi_pb.js";
import { pluginName } from "./identity-service.js";

export type SelfCheck = { ok: true } | { ok: false; reason: string };

/**
 * Whether the CSI server answers on its socket path the way kubelet reaches it: a new connection
 * to the path (so a removed socket file or a wedged server fails), a real GetPluginInfo call, and
 * a deadline. This is what the liveness probe (/healthz) means: "this process serves CSI". It does
 * not look at the SPIRE agent; /readyz does.
 */
export function checkCsiServer(socketPath: string, timeoutMs: number): Promise<SelfCheck> {
  const client = new Client(`unix://${socketPath}`, credentials.createInsecure());
  return new Promise<SelfCheck>((resolve) => {
    client.makeUnaryRequest(
      "/csi.v1.Identity/GetPluginInfo",
      (request: GetPluginInfoRequest) => Buffer.from(toBinary(GetPluginInfoRequestSchema, request)),
      (bytes: Buffer) => fromBinary(GetPluginInfoResponseSchema, bytes),
      create(GetPluginInfoRequestSchema),
      { deadline: Date.now() + timeoutMs },
      (error: ServiceError | null, response) => {
        if (error) resolve({ ok: false, reason: `CSI server on ${socketPath} did not answer GetPluginInfo: ${status[error.code]}: ${error.details}` });
        else if (response?.name !== pluginName) resolve({ ok: false, reason: `${socketPath} is served by ${JSON.stringify(response?.name)}, not ${pluginName}` });
        else resolve({ ok: true });
      },
    );
  }).finally(() => client.close());
}
