import { Code, ConnectError } from "@connectrpc/connect";

/** What went wrong talking to the agent, in words an operator can act on. */
export type AgentProblem =
  | { kind: "unreachable"; detail: string }
  | { kind: "not-authorized"; detail: string }
  | { kind: "stream-failed"; detail: string };

export function classifyAgentError(error: unknown, adminSocketPath: string): AgentProblem {
  const connectError = ConnectError.from(error);
  if (connectError.code === Code.PermissionDenied) {
    return {
      kind: "not-authorized",
      detail:
        `the SPIRE agent refused the driver (PermissionDenied: ${connectError.rawMessage}); ` +
        "register the driver with a SPIFFE ID listed in the agent's authorized_delegates",
    };
  }
  const cause = String((connectError.cause as Error | undefined)?.message ?? connectError.rawMessage);
  if (connectError.code === Code.Unavailable || /ENOENT|ECONNREFUSED|EPIPE|ECONNRESET/.test(cause)) {
    return {
      kind: "unreachable",
      detail: `the SPIRE agent admin socket ${adminSocketPath} is not answering (${cause})`,
    };
  }
  return { kind: "stream-failed", detail: `agent stream failed: [${Code[connectError.code]}] ${connectError.rawMessage}` };
}
