import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { access, mkdir, readdir, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { isMountPoint } from "../../src/files/mount-table.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { mountsUnder } from "../support/driver-node.js";
import { ephemeralVolumeId } from "../support/kubelet-sim.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

let podCounter = 0;
function newPod() {
  podCounter += 1;
  return { uid: `0d0e0f00-0000-4000-8000-${String(podCounter).padStart(12, "0")}`, name: `own-${podCounter}`, namespace: "own", serviceAccount: "app" };
}

/** "Only ever touch your own volume" (issue 12, items 1-6, 13, 14), through the real driver's CSI socket with tmpfs backing. */
describe("the driver only ever touches its own volume", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs", publishTimeout: "5s" } });
    await fx.agent.addEntry({ id: "app", spiffeId: "spiffe://example.org/ns/own/sa/app", selectors: [{ type: "k8s", value: "ns:own" }, { type: "k8s", value: "sa:app" }] });
  });
  after(() => fx.close());

  test("item 1: unpublish with a volume_id the driver does not hold leaves another volume's target alone", async () => {
    const volume = await fx.kubelet.publish(newPod(), "svid");
    const before = await readVolumeIdentity(volume.targetPath);
    const foreignId = ephemeralVolumeId("ffffffff-0000-4000-8000-000000000000", "svid");
    await fx.kubelet.node.nodeUnpublishVolume({ volumeId: foreignId, targetPath: volume.targetPath });

    assert.equal(await isMountPoint(volume.targetPath), true, "the live volume's tmpfs is still mounted");
    assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber, "its files are still there");
    await fx.driver.waitForLog((line) => line.msg.includes("names the target of another volume") && line.heldBy === volume.volumeId, 2_000);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
    assert.notEqual((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber, "it keeps rotating into its tmpfs");
    await fx.kubelet.unpublish(volume);
  });

  test("item 1: once a volume's tmpfs is gone, no key is written to the dir below it; the volume is degraded", async () => {
    const volume = await fx.kubelet.publish(newPod(), "svid");
    execFileSync("umount", [volume.targetPath]);
    assert.deepEqual(await readdir(volume.targetPath), [], "the disk dir below the tmpfs is empty");
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg.startsWith("the target is no longer the tmpfs"), 10_000, mark);
    assert.deepEqual(await readdir(volume.targetPath), [], "no key written to the node's disk");
    assert.ok(!fx.driver.logs.slice(mark).some((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated"));
    await fx.kubelet.unpublish(volume);
  });

  test("item 2: unpublish never follows a symlink planted at the target", async () => {
    const outside = join(fx.dir, "outside-2");
    await mkdir(outside);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", outside]);
    try {
      await symlink("elsewhere", join(outside, "..data"));
      await writeFile(join(outside, "precious"), "not the driver's\n");
      const pod = newPod();
      const targetPath = fx.kubelet.targetPath(pod.uid, "linked");
      await mkdir(dirname(targetPath), { recursive: true });
      await symlink(outside, targetPath);

      await fx.kubelet.node.nodeUnpublishVolume({ volumeId: ephemeralVolumeId(pod.uid, "linked"), targetPath });
      assert.equal(await isMountPoint(outside), true, "the mount behind the link is still there");
      assert.deepEqual((await readdir(outside)).sort(), ["..data", "precious"], "nothing deleted behind the link");
    } finally {
      execFileSync("umount", [outside]);
    }
  });

  test("item 4: two volume_ids publishing one target at once: one wins, the other gets ALREADY_EXISTS", async () => {
    const pod = newPod();
    const first = fx.kubelet.publishRequest(pod, "shared");
    const second = { ...fx.kubelet.publishRequest(pod, "other"), targetPath: first.targetPath! };
    await mkdir(dirname(first.targetPath!), { recursive: true });
    const outcomes = await Promise.allSettled([fx.kubelet.node.nodePublishVolume(first), fx.kubelet.node.nodePublishVolume(second)]);
    const codes = outcomes.map((outcome) => (outcome.status === "fulfilled" ? "ok" : Code[ConnectError.from(outcome.reason).code]));
    assert.deepEqual([...codes].sort(), ["AlreadyExists", "ok"], `outcomes: ${codes.join(", ")}`);
    const loser = outcomes.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected")!;
    assert.match(ConnectError.from(loser.reason).rawMessage, /^target_path \S+ already holds volume csi-/);
    const winner = outcomes[0]!.status === "fulfilled" ? first : second;
    const loserRequest = winner === first ? second : first;

    // The loser's unpublish (kubelet does not send one after a final error, a hostile caller may)
    // leaves the winner's tmpfs in place.
    await fx.kubelet.node.nodeUnpublishVolume({ volumeId: loserRequest.volumeId!, targetPath: first.targetPath! });
    assert.equal(await isMountPoint(first.targetPath!), true);
    await readVolumeIdentity(first.targetPath!);
    await fx.kubelet.unpublish({ volumeId: winner.volumeId!, targetPath: first.targetPath! });
    assert.equal(await isMountPoint(first.targetPath!), false);
  });

  test("item 3: publish refuses a target whose pod dir is a symlink to a dir outside the kubelet root", async () => {
    const outside = join(fx.dir, "outside-3");
    await mkdir(outside);
    const pod = newPod();
    await mkdir(join(fx.kubeletRoot, "pods"), { recursive: true });
    await symlink(outside, join(fx.kubeletRoot, "pods", pod.uid));
    const outcome = await fx.kubelet.tryPublish(pod, "svid");
    assert.equal(outcome.error?.code, Code.InvalidArgument, outcome.error?.rawMessage ?? "published");
    assert.match(outcome.error.rawMessage, /^target_path: \S+ resolves to \S+outside-3\S*, not \S+: a symlink below \S+ is never followed/);
    assert.deepEqual(await mountsUnder(outside), [], "no tmpfs mounted outside");
    assert.deepEqual(await readdir(join(outside, "volumes", "kubernetes.io~csi")), [], "no target made outside (kubelet removed its own volume dir)");
  });

  test("item 3: unpublish through a symlinked pod dir leaves the mount behind it alone", async (t) => {
    const outside = join(fx.dir, "outside-3u");
    const behind = join(outside, "volumes", "kubernetes.io~csi", "svid", "mount");
    await mkdir(behind, { recursive: true });
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", behind]);
    t.after(() => execFileSync("umount", [behind]));
    await symlink("elsewhere", join(behind, "..data"));
    const pod = newPod();
    await mkdir(join(fx.kubeletRoot, "pods"), { recursive: true });
    await symlink(outside, join(fx.kubeletRoot, "pods", pod.uid));

    await fx.kubelet.node.nodeUnpublishVolume({ volumeId: ephemeralVolumeId(pod.uid, "svid"), targetPath: fx.kubelet.targetPath(pod.uid, "svid") });
    assert.equal(await isMountPoint(behind), true, "the tmpfs behind the link is still mounted");
    assert.deepEqual(await readdir(behind), ["..data"]);
    await fx.driver.waitForLog((line) => line.msg.startsWith("the target's dir resolves to a place outside"), 2_000);
  });

  test("item 5: records that break the publish rules are quarantined at start, never mounted or written", async (t) => {
    const outside = join(fx.dir, "outside-5");
    await mkdir(join(outside, "mount"), { recursive: true });
    // The fixture only unmounts below the kubelet root; a driver that trusted the record mounts here.
    t.after(async () => {
      if (await isMountPoint(join(outside, "mount"))) execFileSync("umount", [join(outside, "mount")]);
    });
    const pod = newPod();
    const record = (volumeId: string, fields: Record<string, unknown>) =>
      writeFile(
        join(fx.metadataDir, `${volumeId}.json`),
        JSON.stringify({
          schemaVersion: 1,
          volumeId,
          targetPath: fx.kubelet.targetPath(pod.uid, "svid"),
          podUid: pod.uid,
          podName: pod.name,
          podNamespace: pod.namespace,
          serviceAccount: pod.serviceAccount,
          attributes: {},
          readOnly: true,
          createdAt: new Date().toISOString(),
          ...fields,
        }),
        { mode: 0o600 },
      );
    await mkdir(dirname(fx.kubelet.targetPath(pod.uid, "svid")), { recursive: true });
    await record("csi-outside", { targetPath: join(outside, "mount") });
    await record("csi-dotdot", { targetPath: `${fx.kubeletRoot}/pods/${pod.uid}/volumes/kubernetes.io~csi/svid/../../../../../../outside-5/mount` });
    await record("csi-badpod", { serviceAccount: "sa:admin k8s:ns:kube-system" });
    await record("csi-otherpod", { podUid: "99999999-0000-4000-8000-000000000000" });

    await fx.driver.restart();
    const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000);
    assert.equal(adoption.quarantined, 4);
    assert.equal(adoption.adopted, 0);
    const quarantined = await readdir(join(fx.metadataDir, "quarantine"));
    for (const id of ["csi-outside", "csi-dotdot", "csi-badpod", "csi-otherpod"]) {
      assert.ok(quarantined.some((name) => name.startsWith(`${id}.json.`)), `${id} quarantined`);
      await assert.rejects(access(join(fx.metadataDir, `${id}.json`)));
    }
    const reasons = fx.driver.logs.filter((line) => line.msg === "quarantined an unusable volume record").map((line) => String(line.reason));
    assert.ok(reasons.some((reason) => /^fails the publish rules: target_path: must be /.test(reason)), reasons.join("\n"));
    assert.ok(reasons.some((reason) => /serviceAccount\.name\]: .* is not a valid value/.test(reason)), reasons.join("\n"));
    assert.ok(reasons.some((reason) => /target_path: must lie under/.test(reason)), reasons.join("\n"));
    assert.equal(await isMountPoint(join(outside, "mount")), false);
    assert.deepEqual(await readdir(join(outside, "mount")), [], "nothing written where the records pointed");
  });

  test("item 14: --kubelet-root with a trailing slash still accepts kubelet's targets", async () => {
    const configured = fx.driver.options.kubeletRoot;
    fx.driver.options.kubeletRoot = `${configured}/`;
    try {
      await fx.driver.restart();
      const volume = await fx.kubelet.publish(newPod(), "svid");
      await readVolumeIdentity(volume.targetPath);
      await fx.kubelet.unpublish(volume);
    } finally {
      fx.driver.options.kubeletRoot = configured;
      await fx.driver.restart();
    }
  });

  test("item 6: trust domain names from the agent that are not valid SPIFFE names never become files", async (t) => {
    const hostile = ["spiffe://../../../evil", "spiffe://a/../../escape", "spiffe://UPPER.example", "spiffe://..x"];
    const bundles = Object.fromEntries([["spiffe://example.org", fx.agent.ca.bundleDer()], ...hostile.map((key) => [key, fx.agent.ca.bundleDer()])]);
    fx.agent.setBundles(bundles);
    t.after(() => fx.agent.setBundles(undefined));
    await fx.agent.addEntry({ id: "td6", spiffeId: "spiffe://example.org/td6", selectors: [{ type: "k8s", value: "sa:td6" }], federatesWith: hostile });
    t.after(() => fx.agent.removeEntry("td6"));

    const volume = await fx.kubelet.publish({ ...newPod(), serviceAccount: "td6" }, "svid", { "csi.spire.io/layout": "spiffe-fs" });
    assert.deepEqual((await readdir(volume.targetPath)).filter((name) => !name.startsWith("..")).sort(), ["credential-bundle.pem", "example.org.trust-bundle.pem"]);
    const everything = (await readdir(fx.dir, { recursive: true })).map(String);
    assert.deepEqual(everything.filter((path) => /evil|escape|UPPER|\.\.x\./.test(path)), [], "no file named after a hostile trust domain, inside or outside the volume");
    assert.ok(fx.driver.logs.some((line) => line.msg === "ignoring a bundle whose key is not a valid SPIFFE trust domain name" && line.trustDomain === "spiffe://../../../evil"));
    assert.ok(fx.driver.logs.some((line) => line.msg.startsWith("ignoring federates_with entries") && line.dropped === hostile.length));
    await fx.kubelet.unpublish(volume);
  });

  test("item 13: under umask 077 an fsGroup volume's files still get their modes (key 0640, dirs 0750)", async () => {
    fx.driver.options.umask = "077";
    try {
      await fx.driver.restart();
      const volume = await fx.kubelet.publish({ ...newPod(), fsGroup: 2000 }, "svid");
      for (const name of ["tls.key", "tls.crt", "ca.crt"]) {
        const info = await stat(join(volume.targetPath, name));
        assert.equal((info.mode & 0o777).toString(8), "640", `${name} mode`);
        assert.equal(info.gid, 2000, `${name} group`);
      }
      assert.equal(((await stat(join(volume.targetPath, "..data"))).mode & 0o777).toString(8), "750");
      assert.equal(((await stat(volume.targetPath)).mode & 0o777).toString(8), "750");
      await fx.kubelet.unpublish(volume);
    } finally {
      delete fx.driver.options.umask;
      await fx.driver.restart();
    }
  });
});
