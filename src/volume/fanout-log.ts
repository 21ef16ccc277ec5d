import type { Logger } from "pino";

export type RewriteCause = "rotation" | "update";

/**
 * The info lines of snapshot rewrites (SVID rotations, bundle and JWT updates). A rewrite that
 * comes alone is logged at info with its volume. When many volumes rewrite together (one agent
 * push re-issuing the SVIDs of every pod, a bundle rotation), every rewrite after the first goes
 * to debug and one info line sums the fan-out up once no rewrite came for `quietMs`: hundreds of
 * info lines would cost CPU exactly when the driver is busiest, and tell an operator nothing the
 * summary does not.
 */
export class FanoutLog {
  private fanout: { rotated: number; updated: number; firstAt: number; lastAt: number } | undefined;
  private quietTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly quietMs = 500,
  ) {}

  rewritten(volumeLogger: Logger, fields: object, message: string, cause: RewriteCause): void {
    const at = performance.now();
    if (this.fanout === undefined) {
      volumeLogger.info(fields, message);
      this.fanout = { rotated: 0, updated: 0, firstAt: at, lastAt: at };
    } else {
      volumeLogger.debug(fields, message);
    }
    this.fanout[cause === "rotation" ? "rotated" : "updated"] += 1;
    this.fanout.lastAt = at;
    // One timer, pushed back by each rewrite; unref'd, so it never keeps a stopping driver alive.
    this.quietTimer ??= setTimeout(() => this.summarise(), this.quietMs).unref();
    this.quietTimer.refresh();
  }

  private summarise(): void {
    const fanout = this.fanout;
    this.fanout = undefined;
    this.quietTimer = undefined;
    if (fanout === undefined || fanout.rotated + fanout.updated < 2) return;
    this.logger.info(
      { volumes: fanout.rotated + fanout.updated, rotated: fanout.rotated, updated: fanout.updated, ms: Math.round(fanout.lastAt - fanout.firstAt) },
      "identity files of many volumes rewritten together (each volume's line at debug)",
    );
  }
}
