export interface BackoffOptions {
  minMs: number;
  maxMs: number;
}

/**
 * Capped exponential backoff with jitter: the n-th delay is drawn from [d/2, d] where d doubles
 * from minMs up to maxMs. Jitter keeps hundreds of volume streams from resubscribing in lockstep
 * after an agent restart. `reset()` after a stream delivered a message, so one good connection
 * forgives earlier failures.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly options: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {}

  next(): number {
    const ceiling = Math.min(this.options.maxMs, this.options.minMs * 2 ** this.attempt);
    if (ceiling < this.options.maxMs) this.attempt += 1;
    return Math.round(ceiling / 2 + (ceiling / 2) * this.random());
  }

  reset(): void {
    this.attempt = 0;
  }

  get failures(): number {
    return this.attempt;
  }
}
