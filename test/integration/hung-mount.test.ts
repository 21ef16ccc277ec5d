import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { isMountPoint } from "../../src/files/mount-table.js";
import { hangingMountCommands } from "../support/hanging-mount.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = (n: number) => ({ uid: `7c1d2e3f-0a1b-4c2d-8e3f-00000000000${n}`, name: `web-${n}`, namespace: "demo", serviceAccount: "web" });

let fx: DriverFixture;
let fakeDir: string;
let fake: Awaited<ReturnType<typeof hangingMountCommands>>;

before(async () => {
  fakeDir = await mkdtemp("/tmp/scsi-fake-");
  fake = await hangingMountCommands(fakeDir);
  fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs", publishTimeout: "2s", pathPrefix: fake.bin } });
  await fx.agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/ns/demo/sa/web", selectors: [{ type: "k8s", value: "ns:demo" }] });
});

after(async () => {
  try {
    await fx.close();
  } finally {
    for (const pid of await fake.hungPids()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already killed by the driver.
      }
    }
    await rm(fakeDir, { recursive: true, force: true });
  }
});

test("two publishes whose mount(8) hangs answer DEADLINE_EXCEEDED at their deadline; another pod's publish and unpublish do not wait for them", async () => {
  const settled: string[] = [];
  const earlier = await fx.kubelet.publish(pod(1), "spiffe");
  // One attempt each, with kubelet's own 2-minute call deadline: the answer must come from the driver.
  const hung = ["hang-a", "hang-b"].map((name) =>
    fx.kubelet.tryPublish(pod(2), name, {}, { maxAttempts: 1 }).then((outcome) => {
      settled.push(name);
      return outcome;
    }),
  );
  while ((await fake.hungPids()).length < 2) await new Promise((resolve) => setTimeout(resolve, 20));

  await fx.kubelet.unpublish(earlier);
  settled.push("unpublish");
  const later = await fx.kubelet.publish(pod(3), "spiffe");
  settled.push("publish");
  assert.deepEqual(settled, ["unpublish", "publish"], "neither waited for the hung mounts");
  assert.equal(await isMountPoint(earlier.targetPath), false);
  assert.equal(await isMountPoint(later.targetPath), true);

  for (const outcome of await Promise.all(hung)) {
    assert.equal(outcome.error?.code, Code.DeadlineExceeded, outcome.error?.message);
    assert.match(outcome.error.rawMessage, /^mounting tmpfs on .*\/hang-[ab]\/mount did not finish within 2s; the mount command was killed; kubelet retries$/);
    assert.equal(await isMountPoint(outcome.targetPath), false);
  }
  await fx.kubelet.unpublish(later);
});
