import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff } from "../../src/spire/backoff.js";

test("delays double from min up to max and stay within [d/2, d]", () => {
  const draws = [0, 1, 0.5, 0, 1, 1, 1, 1];
  let i = 0;
  const backoff = new Backoff({ minMs: 100, maxMs: 1000 }, () => draws[i++] ?? 1);
  const delays = Array.from({ length: 8 }, () => backoff.next());
  assert.deepEqual(delays, [50, 200, 300, 400, 1000, 1000, 1000, 1000]);
});

test("jitter spreads delays and never exceeds the cap", () => {
  const backoff = new Backoff({ minMs: 500, maxMs: 30_000 });
  const seen = Array.from({ length: 200 }, () => backoff.next());
  assert.ok(seen.every((delay) => delay >= 250 && delay <= 30_000), "every delay is within [min/2, max]");
  const capped = seen.slice(-50);
  assert.ok(capped.every((delay) => delay >= 15_000), "capped delays are in [max/2, max]");
  assert.ok(new Set(capped).size > 10, "jitter makes delays differ");
});

test("reset starts again from the minimum", () => {
  const backoff = new Backoff({ minMs: 100, maxMs: 10_000 }, () => 1);
  for (let i = 0; i < 6; i++) backoff.next();
  assert.equal(backoff.next(), 6400);
  backoff.reset();
  assert.equal(backoff.failures, 0);
  assert.equal(backoff.next(), 100);
});
