import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import type { AgentClient } from "./agent-client.js";
import type { AgentAvailability } from "./agent-availability.js";
import type { AgentCallLimiter } from "./agent-call-limiter.js";
import { classifyAgentError } from "./agent-errors.js";
import { Backoff, type BackoffOptions } from "./backoff.js";

export interface JwtRefresherOptions {
  client: AgentClient;
  selectors: { type: string; value: string }[];
  audiences: readonly string[];
  /** Which SVID to use when several entries match, as for X.509. */
  choose: (svids: { spiffeId: string; hint: string }[]) => number;
  availability: AgentAvailability;
  limiter: AgentCallLimiter;
  adminSocketPath: string;
  backoff: BackoffOptions;
  /** Deadline of each FetchJWTSVIDs call: a call the agent never answers must give its limiter slot back. */
  fetchTimeoutMs: number;
  logger: Logger;
  onToken(audience: string, token: string): void;
  onRetry?(): void;
}

/**
 * An entry is created by an operator or a controller, not by retrying: while none matches, the
 * fetches are spaced at least this far apart so that pods without entries cost the agent little.
 */
const noEntryRetryMinMs = 5_000;

/**
 * Keeps one JWT-SVID per audience fresh: fetched at start, again at half its lifetime, and at
 * once when the agent's socket reappears after a restart. The audiences are fetched one after
 * another, each fetch through the driver-wide agent call limiter, so a volume never has more than
 * one fetch at the agent however many audiences it asks for. Failures retry with backoff; the
 * last good tokens stay on disk meanwhile.
 */
export class JwtRefresher {
  private readonly stopController = new AbortController();
  private running: Promise<void> | undefined;

  constructor(private readonly options: JwtRefresherOptions) {}

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopController.abort();
    await this.running;
  }

  private async run(): Promise<void> {
    const { options } = this;
    const signal = this.stopController.signal;
    const backoff = new Backoff(options.backoff);
    /** Date.now() at which each audience's token is due; 0: now. */
    const dueAt = new Map(options.audiences.map((audience) => [audience, 0]));
    while (!signal.aborted) {
      let problem: { audience: string; error: unknown } | undefined;
      for (const audience of options.audiences) {
        if (dueAt.get(audience)! > Date.now()) continue;
        try {
          dueAt.set(audience, await this.fetch(audience, signal));
        } catch (error) {
          problem = { audience, error };
          break;
        }
      }
      if (signal.aborted) return;
      let delayMs: number;
      if (problem) {
        options.onRetry?.();
        const classified = problem.error instanceof Error && !("code" in problem.error) ? undefined : classifyAgentError(problem.error, options.adminSocketPath, "fetch-jwt");
        delayMs = classified?.kind === "no-entry" ? Math.max(noEntryRetryMinMs, backoff.next()) : backoff.next();
        const detail =
          classified?.kind === "stream-failed" && ConnectError.from(problem.error).code === Code.DeadlineExceeded
            ? `the SPIRE agent did not answer FetchJWTSVIDs within ${options.fetchTimeoutMs} ms (--jwt-fetch-timeout); the call was abandoned and its agent call slot freed`
            : (classified?.detail ?? (problem.error as Error).message);
        options.logger.warn({ audience: problem.audience, retryInMs: delayMs, detail }, "fetching a JWT-SVID failed; the previous token stays");
      } else {
        backoff.reset();
        delayMs = Math.max(1000, Math.min(...dueAt.values()) - Date.now());
      }
      const sleptFrom = Date.now();
      await options.availability.sleepUnlessReappears(delayMs, signal);
      // Woken early: the agent's socket reappeared (a restart), so every token is fetched anew.
      if (!problem && Date.now() - sleptFrom < delayMs - 50) for (const audience of options.audiences) dueAt.set(audience, 0);
    }
  }

  /** Fetches the audience's token and hands it on; returns when it is due again (half its lifetime). */
  private async fetch(audience: string, signal: AbortSignal): Promise<number> {
    const { options } = this;
    const release = await options.limiter.acquire(signal);
    let response;
    try {
      response = await options.client.fetchJWTSVIDs({ audience: [audience], selectors: options.selectors }, { signal, timeoutMs: options.fetchTimeoutMs });
    } finally {
      release();
    }
    const svids = response.svids.map((svid) => ({
      spiffeId: svid.id ? `spiffe://${svid.id.trustDomain}${svid.id.path}` : "",
      hint: svid.hint,
    }));
    const chosen = response.svids[options.choose(svids)];
    if (!chosen) throw new Error("the agent returned no JWT-SVID for the pod's selectors");
    options.onToken(audience, chosen.token);
    const lifetimeMs = (Number(chosen.expiresAt) - Number(chosen.issuedAt)) * 1000;
    return Number(chosen.issuedAt) * 1000 + lifetimeMs / 2;
  }
}
