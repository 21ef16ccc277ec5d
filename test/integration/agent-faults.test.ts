import assert from "node:assert/strict";
import { readdir, stat } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { readVolumeIdentity } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "1c2d3e4f-0000-4000-8000-00000000000a", name: "job-0", namespace: "batch", serviceAccount: "runner" };
const entry = { id: "runner", spiffeId: "spiffe://example.org/ns/batch/sa/runner", selectors: [{ type: "k8s", value: "ns:batch" }, { type: "k8s", value: "sa:runner" }] };

describe("agent behaviour and faults", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { publishTimeout: "1500ms" } });
  });
  after(() => fx.close());

  test("no matching entry: publish fails at the deadline naming the selectors, then kubelet's retry succeeds once the entry exists", async () => {
    const started = Date.now();
    const outcome = await fx.kubelet.tryPublish(pod, "late", {}, { maxAttempts: 1 });
    const elapsed = Date.now() - started;
    assert.equal(outcome.error?.code, Code.DeadlineExceeded);
    assert.match(outcome.error?.rawMessage ?? "", /no identity within 1\.5s: the SPIRE agent has no registration entry matching selectors \[k8s:ns:batch k8s:sa:runner k8s:pod-uid:1c2d3e4f-0000-4000-8000-00000000000a k8s:pod-name:job-0 k8s:node-name:test-node\]/);
    assert.ok(elapsed >= 1400 && elapsed < 10_000, `failed at the deadline (${elapsed} ms)`);
    assert.equal(fx.agent.openX509Streams, 0, "the failed publish closed its stream");

    const retried = fx.kubelet.tryPublish(pod, "late", {}, { maxAttempts: 10 });
    await sleep(500);
    await fx.agent.addEntry(entry);
    const result = await retried;
    assert.equal(result.error, undefined);
    assert.equal((await readVolumeIdentity(result.targetPath)).spiffeId, entry.spiffeId);
    await fx.kubelet.unpublish(result);
    fx.agent.removeEntry(entry.id);
  });

  test("driver not an authorized delegate: FAILED_PRECONDITION that says so", async () => {
    await fx.agent.addEntry(entry);
    fx.agent.deny(true);
    try {
      const outcome = await fx.kubelet.tryPublish(pod, "denied", {}, { maxAttempts: 1 });
      assert.equal(outcome.error?.code, Code.FailedPrecondition);
      assert.match(outcome.error?.rawMessage ?? "", /the SPIRE agent refused the driver \(PermissionDenied: .*\); register the driver with a SPIFFE ID listed in the agent's authorized_delegates/);
    } finally {
      fx.agent.deny(false);
      fx.agent.removeEntry(entry.id);
    }
  });

  test("agent restart mid-stream: files stay, the stream comes back, rotation continues", async () => {
    await fx.agent.addEntry(entry);
    const volume = await fx.kubelet.publish(pod, "restart");
    const first = await readVolumeIdentity(volume.targetPath);
    await fx.agent.stop();
    await sleep(700);
    assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, first.serialNumber, "files kept while the agent is down");
    assert.equal((await fx.kubelet.identity.probe({})).ready, true, "Probe stays ready while the agent is away (liveness is not about the agent)");
    await fx.agent.start();
    await fx.agent.waitForStreams(1, 10_000);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === volume.volumeId, 10_000, mark);
    const rotated = await readVolumeIdentity(volume.targetPath);
    assert.notEqual(rotated.serialNumber, first.serialNumber);
    await fx.kubelet.unpublish(volume);
    fx.agent.removeEntry(entry.id);
  });

  test("a dropped stream is resubscribed and duplicate messages cause no rewrite", async () => {
    await fx.agent.addEntry(entry);
    const volume = await fx.kubelet.publish(pod, "drop");
    const dataBefore = (await stat(`${volume.targetPath}/..data`, { bigint: true })).ino;
    // The driver's answer to a repeated message, whichever it is: skipped, or (the bug) rewritten.
    const nextAnswer = (fromIndex: number) =>
      fx.driver.waitForLog(
        (line) => line.volumeId === volume.volumeId && (line.msg === "the agent's message changes no file; nothing rewritten" || line.msg === "identity files rotated"),
        10_000,
        fromIndex,
      );
    const calls = fx.agent.subscribeCalls;
    const beforeDrop = fx.driver.logs.length;
    fx.agent.dropStreams();
    await fx.agent.waitForSubscribeCalls(calls + 1);
    await fx.agent.waitForStreams(1);
    // The new stream starts with the same SVID set the files already hold.
    assert.equal((await nextAnswer(beforeDrop)).msg, "the agent's message changes no file; nothing rewritten", "no rewrite after resubscribing");
    const beforeResend = fx.driver.logs.length;
    fx.agent.resendCurrent();
    assert.equal((await nextAnswer(beforeResend)).msg, "the agent's message changes no file; nothing rewritten", "no rewrite for a duplicate");
    assert.equal(fx.driver.logs.slice(beforeDrop).filter((line) => line.msg === "identity files rotated").length, 0);
    assert.equal((await stat(`${volume.targetPath}/..data`, { bigint: true })).ino, dataBefore, "..data still names the same snapshot");
    await fx.kubelet.unpublish(volume);
    fx.agent.removeEntry(entry.id);
  });

  test("kubelet retrying a FAILED_PRECONDITION publish again and again leaves no agent stream open", async () => {
    await fx.agent.addEntry(entry);
    fx.agent.deny(true);
    try {
      const calls = fx.agent.subscribeCalls;
      const outcome = await fx.kubelet.tryPublish(pod, "retried", {}, { retryFinalErrors: true, maxAttempts: 6, maxDelayMs: 100 });
      assert.deepEqual({ code: outcome.error?.code, attempts: outcome.attempts }, { code: Code.FailedPrecondition, attempts: 6 });
      assert.ok(fx.agent.subscribeCalls - calls >= 6, "every attempt reached the agent");
      await fx.agent.waitForStreams(0);
      assert.equal(fx.agent.openX509Streams, 0);
      assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), [], "no record for a volume never published");
    } finally {
      fx.agent.deny(false);
      fx.agent.removeEntry(entry.id);
    }
  });
});
