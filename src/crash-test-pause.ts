/**
 * Test-only pause points for the crash tests (test/reliability/crash-chaos.test.ts). With
 * SPIRE_CSI_CRASH_TEST_PAUSE set to a point's name, a publish that reaches that point prints one
 * line and never continues, so the test can SIGKILL the driver exactly there. Unset (always, in
 * production) every call is a no-op.
 */
export type CrashTestPoint =
  /** The record is on disk; the target is not mounted yet. */
  | "record-written"
  /** The record is down and the target mounted; no file written yet. */
  | "mounted"
  /** The first snapshot dir holds one file; `..data` does not exist yet. */
  | "first-write";

const pausedAt = process.env.SPIRE_CSI_CRASH_TEST_PAUSE;

export function crashTestPauseEnabled(point: CrashTestPoint): boolean {
  return pausedAt === point;
}

export function crashTestPause(point: CrashTestPoint, target: string): Promise<never> {
  process.stdout.write(`${JSON.stringify({ level: 40, time: Date.now(), msg: "crash-test pause point reached; waiting to be killed", point, target })}\n`);
  return new Promise<never>(() => undefined);
}
