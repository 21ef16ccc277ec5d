import type { Logger } from "pino";
import type { AgentClient } from "./agent-client.js";
import type { AgentAvailability } from "./agent-availability.js";
import { classifyAgentError } from "./agent-errors.js";
import { Backoff, type BackoffOptions } from "./backoff.js";

export interface JwtRefresherOptions {
  client: AgentClient;
  selectors: { type: string; value: string }[];
  audiences: readonly string[];
  /** Which SVID to use when several entries match, as for X.509. */
  choose: (svids: { spiffeId: string; hint: string }[]) => number;
  availability: AgentAvailability;
  adminSocketPath: string;
  backoff: BackoffOptions;
  logger: Logger;
  onToken(audience: string, token: string): void;
  onRetry?(): void;
}

/**
 * Keeps one JWT-SVID per audience fresh: fetched at start, again at half its lifetime, and at
 * once when the agent's socket reappears after a restart. Failures retry with backoff; the last
 * good token stays on disk meanwhile.
 */
export class JwtRefresher {
  private readonly stopController = new AbortController();
  private running: Promise<void>[] = [];

  constructor(private readonly options: JwtRefresherOptions) {}

  start(): void {
    if (this.running.length > 0) return;
    this.running = this.options.audiences.map((audience) => this.keepFresh(audience));
  }

  async stop(): Promise<void> {
    this.stopController.abort();
    await Promise.all(this.running);
  }

  private async keepFresh(audience: string): Promise<void> {
    const { options } = this;
    const signal = this.stopController.signal;
    const backoff = new Backoff(options.backoff);
    while (!signal.aborted) {
      let delayMs: number;
      try {
        const response = await options.client.fetchJWTSVIDs({ audience: [audience], selectors: options.selectors }, { signal });
        const svids = response.svids.map((svid) => ({
          spiffeId: svid.id ? `spiffe://${svid.id.trustDomain}${svid.id.path}` : "",
          hint: svid.hint,
        }));
        const chosen = response.svids[options.choose(svids)];
        if (!chosen) throw new Error("the agent returned no JWT-SVID for the pod's selectors");
        options.onToken(audience, chosen.token);
        backoff.reset();
        const lifetimeMs = (Number(chosen.expiresAt) - Number(chosen.issuedAt)) * 1000;
        const refreshAtMs = Number(chosen.issuedAt) * 1000 + lifetimeMs / 2;
        delayMs = Math.max(1000, refreshAtMs - Date.now());
      } catch (error) {
        if (signal.aborted) return;
        options.onRetry?.();
        delayMs = backoff.next();
        const detail = error instanceof Error && !("code" in error) ? error.message : classifyAgentError(error, options.adminSocketPath).detail;
        options.logger.warn({ audience, retryInMs: delayMs, detail }, "fetching a JWT-SVID failed; the previous token stays");
      }
      await options.availability.sleepUnlessReappears(delayMs, signal);
    }
  }
}
