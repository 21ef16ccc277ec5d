import { connect, type Socket } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Registration, type PluginInfo } from "../../src/gen/kubelet/pluginregistration/v1/api_pb.js";

/**
 * What kubelet's plugin watcher does with a socket in plugins_registry/: dial it, GetInfo,
 * register the endpoint (the caller checks it), then NotifyRegistrationStatus; each round on a
 * new connection, as a restarted kubelet would.
 */
export async function registerLikeKubelet(
  socketPath: string,
  verdict: { registered: boolean; error?: string } = { registered: true },
): Promise<PluginInfo> {
  const sockets = new Set<Socket>();
  const transport = createGrpcTransport({
    baseUrl: "http://localhost",
    nodeOptions: {
      createConnection: () => {
        const socket = connect(socketPath);
        sockets.add(socket);
        return socket;
      },
    },
  });
  const client = createClient(Registration, transport);
  try {
    const info = await client.getInfo({}, { timeoutMs: 5_000 });
    await client.notifyRegistrationStatus({ pluginRegistered: verdict.registered, error: verdict.error ?? "" }, { timeoutMs: 5_000 });
    return info;
  } finally {
    for (const socket of sockets) socket.destroy();
  }
}
