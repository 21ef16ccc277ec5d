/**
 * Milliseconds since the epoch with sub-millisecond resolution. The bench, the fake agent (its
 * own process) and the file watchers compare times across processes, so all use this clock.
 */
export function now(): number {
  return performance.timeOrigin + performance.now();
}
