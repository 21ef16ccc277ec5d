/**
 * One cap on the agent calls the whole driver has in flight: X.509 stream opens (until the
 * agent's first message) and JWT-SVID fetches. Every such call costs the SPIRE agent an
 * attestation of the driver, and the agent deadlocks at a few hundred concurrent ones (measured
 * with v1.15.3: ~700 bare concurrent FetchJWTSVIDs, or a publish flood of 300 pods × 10 JWT
 * audiences), after which no pod on the node gets an identity until it is killed. Pods must not
 * be able to multiply load on the agent, so calls beyond the cap wait here, in arrival order.
 */
export class AgentCallLimiter {
  private active = 0;
  private highest = 0;
  private readonly waiting: { grant(): void }[] = [];

  constructor(readonly limit: number) {}

  /** Calls in flight now. */
  get inFlight(): number {
    return this.active;
  }

  /** The most calls ever in flight at once since start (never above `limit`). */
  get peak(): number {
    return this.highest;
  }

  /** Calls waiting for a slot. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Resolves with a release function once a slot is free; the caller must call it exactly once
   * (later calls are ignored). Rejects with the signal's reason if it aborts while waiting.
   */
  acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.active < this.limit) return Promise.resolve(this.take());
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal.removeEventListener("abort", onAbort);
          resolve(this.take());
        },
      };
      const onAbort = () => {
        const index = this.waiting.indexOf(waiter);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private take(): () => void {
    this.active += 1;
    this.highest = Math.max(this.highest, this.active);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active -= 1;
      this.waiting.shift()?.grant();
    };
  }
}
