import { connect } from "node:net";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DelegatedIdentity } from "../gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";

export type AgentClient = Client<typeof DelegatedIdentity>;

/**
 * A typed client of the agent's Delegated Identity API on its admin socket. All volume streams
 * share one HTTP/2 connection. No keepalive pings: grpc-go servers close connections that ping
 * more often than every 5 minutes, and a dead agent is noticed through the socket closing.
 */
export function createAgentClient(adminSocketPath: string): AgentClient {
  const transport = createGrpcTransport({
    baseUrl: "http://localhost",
    nodeOptions: { createConnection: () => connect(adminSocketPath) },
  });
  return createClient(DelegatedIdentity, transport);
}
