import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { KeyedMutex } from "../../src/volume/keyed-mutex.js";

test("operations on one key run one at a time, in order, even when one fails", async () => {
  const mutex = new KeyedMutex();
  const log: string[] = [];
  const op = (name: string, ms: number, fail = false) =>
    mutex.run("a", async () => {
      log.push(`${name}:start`);
      await sleep(ms);
      log.push(`${name}:end`);
      if (fail) throw new Error(name);
      return name;
    });
  const results = await Promise.allSettled([op("one", 20), op("two", 5, true), op("three", 1)]);
  assert.deepEqual(log, ["one:start", "one:end", "two:start", "two:end", "three:start", "three:end"]);
  assert.equal(results[1]?.status, "rejected");
  assert.deepEqual(results[2], { status: "fulfilled", value: "three" });
});

test("different keys run concurrently", async () => {
  const mutex = new KeyedMutex();
  let running = 0;
  let peak = 0;
  await Promise.all(
    ["a", "b", "c"].map((key) =>
      mutex.run(key, async () => {
        running += 1;
        peak = Math.max(peak, running);
        await sleep(10);
        running -= 1;
      }),
    ),
  );
  assert.equal(peak, 3);
});
