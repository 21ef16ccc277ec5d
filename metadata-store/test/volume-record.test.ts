import assert from "node:assert/strict";
import { test } from "node:test";
import { currentSchemaVersion, volumeIdSchema, volumeRecordSchema } from "../src/index.js";
import { KeyLock } from "../src/key-lock.js";
import { record } from "./helpers.js";

test("schema accepts kubelet's ids and the documented ranges", () => {
  assert.equal(currentSchemaVersion, 1);
  assert.ok(volumeIdSchema.safeParse(`csi-${"0f".repeat(32)}`).success);
  assert.ok(volumeIdSchema.safeParse("A.b_c-9").success);
  assert.ok(volumeIdSchema.safeParse("x".repeat(128)).success);
  for (const bad of ["", ".", "..", "x".repeat(129), "a/b", "a b", "a\0b", "ü"]) {
    assert.equal(volumeIdSchema.safeParse(bad).success, false, JSON.stringify(bad));
  }
  assert.ok(volumeRecordSchema.safeParse(record("csi-a", { fsGroup: 0 })).success);
  assert.ok(volumeRecordSchema.safeParse(record("csi-a", { fsGroup: 2 ** 31 - 1 })).success);
  assert.ok(volumeRecordSchema.safeParse(record("csi-a", { createdAt: "2026-11-24T10:00:00+02:00" })).success);
  assert.equal(volumeRecordSchema.safeParse(record("csi-a", { targetPath: "/a\0b" })).success, false);
  const { fsGroup: _, ...withoutFsGroup } = record("csi-a", { fsGroup: 5 });
  assert.ok(volumeRecordSchema.safeParse(withoutFsGroup).success, "fsGroup is optional");
});

test("KeyLock runs jobs of one key in call order, other keys in parallel, and survives failures", async () => {
  const lock = new KeyLock();
  const events: string[] = [];
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  const a1 = lock.run("a", async () => {
    events.push("a1 start");
    await sleep(30);
    events.push("a1 end");
    throw new Error("a1 failed");
  });
  const a2 = lock.run("a", async () => {
    events.push("a2 start");
    return 2;
  });
  const b1 = lock.run("b", async () => {
    events.push("b1 start");
    return 1;
  });
  await assert.rejects(a1, /a1 failed/);
  assert.equal(await a2, 2);
  assert.equal(await b1, 1);
  assert.deepEqual(events, ["a1 start", "b1 start", "a1 end", "a2 start"]);
});
