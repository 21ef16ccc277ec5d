import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";

/** Polls `url` until it answers `status`; fails naming the last status seen. */
export async function waitForStatus(url: string, status: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 0;
  while (Date.now() < deadline) {
    last = (await fetch(url)).status;
    if (last === status) return;
    await sleep(50);
  }
  assert.equal(last, status, `${url} status`);
}
