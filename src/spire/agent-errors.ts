import { Code, ConnectError } from "@connectrpc/connect";

/** What went wrong talking to the agent, in words an operator can act on. */
export type AgentProblem =
  | { kind: "unreachable"; detail: string }
  | { kind: "not-authorized"; detail: string }
  | { kind: "no-entry"; detail: string }
  | { kind: "stream-failed"; detail: string };

/**
 * `call` tells what failed. SPIRE answers with the same PermissionDenied "no identity issued" when
 * the driver itself has no entry (any call) and when no entry matches the pod's selectors (only
 * FetchJWTSVIDs: a subscription for such a pod gets an empty set). The driver fetches JWT-SVIDs
 * only after the pod's X.509 stream delivered, which proves the driver authorized, so on a JWT
 * fetch that text means the pod has no entry.
 */
export function classifyAgentError(error: unknown, adminSocketPath: string, call: "subscribe" | "fetch-jwt" = "subscribe"): AgentProblem {
  const connectError = ConnectError.from(error);
  if (call === "fetch-jwt" && connectError.code === Code.PermissionDenied && /no identity issued/i.test(connectError.rawMessage)) {
    return {
      kind: "no-entry",
      detail: `no entry matches this pod (the SPIRE agent issued no identity: ${connectError.rawMessage}); register an entry for the pod's selectors`,
    };
  }
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
  const failed = call === "fetch-jwt" ? "FetchJWTSVIDs failed" : "agent stream failed";
  return { kind: "stream-failed", detail: `${failed}: [${Code[connectError.code]}] ${connectError.rawMessage}` };
}
