/**
 * Milliseconds on the system's monotonic clock (CLOCK_MONOTONIC through process.hrtime), the same
 * in every process on the host and immune to wall-clock steps. The bench, the fake agent and the
 * rotation clock (processes of their own) and the file watchers compare times with it.
 */
export function now(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
