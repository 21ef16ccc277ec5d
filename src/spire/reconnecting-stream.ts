import type { Logger } from "pino";
import { Backoff, type BackoffOptions } from "./backoff.js";
import { classifyAgentError, type AgentProblem } from "./agent-errors.js";
import type { AgentAvailability } from "./agent-availability.js";
import type { AgentCallLimiter } from "./agent-call-limiter.js";

export type StreamStatus =
  | { state: "connecting" }
  | { state: "open" }
  | { state: "retrying"; delayMs: number; problem: AgentProblem };

export interface ReconnectingStreamOptions<T> {
  /** Opens one server stream; it ends (or throws) when the agent drops it. */
  open(signal: AbortSignal): AsyncIterable<T>;
  onMessage(message: T): void;
  onStatus?(status: StreamStatus): void;
  backoff: BackoffOptions;
  availability: AgentAvailability;
  /** The driver-wide cap on agent calls: an open counts until the agent's first message. */
  limiter: AgentCallLimiter;
  adminSocketPath: string;
  logger: Logger;
}

/**
 * How long an open stream may hold its limiter slot without a first message. SPIRE answers a
 * subscription at once (an empty SVID set when no entry matches), so this only matters for an
 * agent that accepts the stream but never answers: the slot is then given back rather than held
 * for as long as the stream lives.
 */
const openSlotHoldMs = 5_000;

/**
 * Keeps one agent server stream alive for as long as it is wanted: resubscribes after every
 * failure with capped, jittered backoff, resets the backoff once a message arrives, and wakes
 * early when the agent's admin socket reappears (an agent restart) instead of sleeping out the
 * delay. The stream's consumer keeps its last good state meanwhile.
 */
export class ReconnectingStream<T> {
  private readonly stopController = new AbortController();
  private running: Promise<void> | undefined;

  constructor(private readonly options: ReconnectingStreamOptions<T>) {}

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopController.abort();
    await this.running;
  }

  private async run(): Promise<void> {
    const { options } = this;
    const stopSignal = this.stopController.signal;
    const backoff = new Backoff(options.backoff);
    while (!stopSignal.aborted) {
      options.onStatus?.({ state: "connecting" });
      let problem: AgentProblem;
      let release: () => void;
      try {
        release = await options.limiter.acquire(stopSignal);
      } catch {
        break; // Stopped while waiting for a slot.
      }
      const holdTimer = setTimeout(release, openSlotHoldMs);
      try {
        let first = true;
        for await (const message of options.open(stopSignal)) {
          if (first) {
            first = false;
            clearTimeout(holdTimer);
            release();
            backoff.reset();
            options.onStatus?.({ state: "open" });
          }
          options.onMessage(message);
        }
        problem = { kind: "stream-failed", detail: "the agent closed the stream" };
      } catch (error) {
        if (stopSignal.aborted) break;
        problem = classifyAgentError(error, options.adminSocketPath);
      } finally {
        clearTimeout(holdTimer);
        release();
      }
      if (stopSignal.aborted) break;
      const delayMs = backoff.next();
      options.onStatus?.({ state: "retrying", delayMs, problem });
      options.logger.debug({ delayMs, problem: problem.kind, detail: problem.detail }, "agent stream down, resubscribing");
      await options.availability.sleepUnlessReappears(delayMs, stopSignal);
    }
  }
}
