/**
 * The driver against a real SPIRE v1.15.3 server and agent: the judge of compatibility.
 * Needs the peers from scripts/build-peers.sh (built on first use into ~/.cache).
 */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import type { DriverProcess } from "../support/driver-process.js";
import { readVolumeIdentity, type CheckedIdentity } from "../support/identity-files.js";
import type { KubeletSimulator, PublishedVolume } from "../support/kubelet-sim.js";
import { sample } from "../support/prometheus.js";
import { SpireFixture } from "../support/spire-fixture.js";
import { mtlsHandshake } from "./mtls.js";

const web = { uid: "aa11bb22-0000-4000-8000-000000000001", name: "web-0", namespace: "shop", serviceAccount: "web" };
const db = { uid: "aa11bb22-0000-4000-8000-000000000002", name: "db-0", namespace: "shop", serviceAccount: "db" };
const lonely = { uid: "aa11bb22-0000-4000-8000-000000000003", name: "lonely-0", namespace: "shop", serviceAccount: "lonely" };
const webId = "spiffe://example.org/ns/shop/sa/web";
const dbId = "spiffe://example.org/ns/shop/sa/db";
const ttlSeconds = 30;

async function waitForNewSerial(dir: string, previous: string, timeoutMs: number): Promise<CheckedIdentity> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // The files must be readable and consistent at every moment, not only at the end.
    const identity = await readVolumeIdentity(dir);
    if (identity.serialNumber !== previous) return identity;
    if (Date.now() > deadline) throw new Error(`no rotation within ${timeoutMs} ms (serial still ${previous})`);
    await sleep(250);
  }
}

describe("real SPIRE agent", { timeout: 10 * 60_000 }, () => {
  let spire: SpireFixture;
  let node: DriverNode;
  let dir: string;
  let driver: DriverProcess;
  let kubelet: KubeletSimulator;
  const volumes: PublishedVolume[] = [];

  before(async () => {
    spire = await SpireFixture.start();
    node = await startDriverNode(spire.adminSocket, { volumeBacking: "tmpfs", publishTimeout: "8s" });
    ({ dir, driver, kubelet } = node);
  });

  after(async () => {
    try {
      await node?.close();
    } finally {
      await spire?.stop();
    }
  });

  test("driver not registered as a delegate: a clear PermissionDenied-based message", async () => {
    await spire.createEntry({ spiffeId: webId, selectors: ["k8s:ns:shop", "k8s:sa:web"], x509SvidTtl: ttlSeconds });
    const outcome = await kubelet.tryPublish(web, "denied", {}, { maxAttempts: 1 });
    assert.equal(outcome.error?.code, Code.FailedPrecondition, outcome.error?.message);
    assert.match(
      outcome.error?.rawMessage ?? "",
      /the SPIRE agent refused the driver \(PermissionDenied: (no identity issued|caller not configured as an authorized delegate)\); register the driver with a SPIFFE ID listed in the agent's authorized_delegates/,
    );
  });

  test("two pods with different service accounts each get exactly their own SPIFFE ID", async () => {
    await spire.registerDelegate();
    await spire.createEntry({ spiffeId: dbId, selectors: ["k8s:ns:shop", "k8s:sa:db"], x509SvidTtl: ttlSeconds });
    // The delegate entry needs a sync to reach the agent: kubelet's retries cover that window.
    volumes.push(await kubelet.publish(web, "svid", {}, { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true }));
    volumes.push(await kubelet.publish(db, "svid", {}, { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true }));
    const [webIdentity, dbIdentity] = await Promise.all(volumes.map((volume) => readVolumeIdentity(volume.targetPath)));
    assert.equal(webIdentity!.spiffeId, webId);
    assert.equal(dbIdentity!.spiffeId, dbId);
  });

  test("a /metrics scrape shows the driver's series with sane values", async () => {
    const line = driver.logs.find((entry) => entry.msg === "metrics and health endpoints listening");
    const text = await (await fetch(`http://${String(line?.address)}/metrics`)).text();
    assert.equal(sample(text, "spire_csi_volumes", { phase: "live" }), 2);
    assert.equal(sample(text, "spire_csi_agent_connected"), 1);
    assert.ok((sample(text, "spire_csi_publish_duration_seconds_count", { outcome: "ok" }) ?? 0) >= 2);
    assert.ok((sample(text, "spire_csi_snapshot_writes_total", { result: "ok" }) ?? 0) >= 2);
    for (const volume of volumes) {
      const expiry = (sample(text, "spire_csi_svid_expiration_timestamp_seconds", { volume_id: volume.volumeId }) ?? 0) - Date.now() / 1000;
      assert.ok(expiry > 0 && expiry <= ttlSeconds + 15, `SVID expiry in (0, TTL]: ${expiry}`);
    }
    assert.equal((await fetch(`http://${String(line?.address)}/readyz`)).status, 200);
  });

  test("mTLS between the two identities using only the files", async () => {
    const result = await mtlsHandshake(volumes[0]!.targetPath, volumes[1]!.targetPath, { serverId: webId, clientId: dbId });
    assert.deepEqual(result, { serverSaw: dbId, clientSaw: webId });
  });

  test(`rotation with a ${ttlSeconds}s TTL: a new serial within one TTL, and the new pair still handshakes`, async () => {
    const before = await Promise.all(volumes.map((volume) => readVolumeIdentity(volume.targetPath)));
    const after = await Promise.all(volumes.map((volume, i) => waitForNewSerial(volume.targetPath, before[i]!.serialNumber, ttlSeconds * 1000)));
    assert.equal(after[0]!.spiffeId, webId);
    await mtlsHandshake(volumes[0]!.targetPath, volumes[1]!.targetPath, { serverId: webId, clientId: dbId });
  });

  test("no matching entry: publish fails within the deadline naming the selectors; after the entry exists kubelet's retry succeeds", async () => {
    const started = Date.now();
    const outcome = await kubelet.tryPublish(lonely, "svid", {}, { maxAttempts: 1 });
    assert.equal(outcome.error?.code, Code.DeadlineExceeded);
    assert.match(outcome.error?.rawMessage ?? "", /no registration entry matching selectors \[k8s:ns:shop k8s:sa:lonely k8s:pod-uid:aa11bb22-0000-4000-8000-000000000003 k8s:pod-name:lonely-0 k8s:node-name:test-node\]/);
    assert.ok(Date.now() - started < 12_000, "failed at the 8s deadline");
    await spire.createEntry({ spiffeId: "spiffe://example.org/ns/shop/sa/lonely", selectors: ["k8s:ns:shop", "k8s:sa:lonely"] });
    const retried = await kubelet.publish(lonely, "svid", {}, { maxAttempts: 10, maxDelayMs: 2000 });
    assert.equal((await readVolumeIdentity(retried.targetPath)).spiffeId, "spiffe://example.org/ns/shop/sa/lonely");
    await kubelet.unpublish(retried);
  });

  test("entries shaped as spire-controller-manager writes them (k8s:pod-uid under the node's agent, plus k8s:ns from a workloadSelectorTemplate) serve that pod only", async () => {
    // A ClusterSPIFFEID makes one entry per pod, parented to the agent of the pod's node, with the
    // selector k8s:pod-uid:<uid> and whatever its workloadSelectorTemplates add, e.g.
    // k8s:ns:{{ .PodMeta.Namespace }} (spire-controller-manager pkg/spireentry renderPodEntry).
    const api0 = { uid: "aa11bb22-0000-4000-8000-000000000004", name: "api-0", namespace: "shop", serviceAccount: "api" };
    const api1 = { uid: "aa11bb22-0000-4000-8000-000000000005", name: "api-1", namespace: "shop", serviceAccount: "api" };
    const api2 = { uid: "aa11bb22-0000-4000-8000-000000000006", name: "api-2", namespace: "shop", serviceAccount: "api" };
    const apiId = "spiffe://example.org/ns/shop/sa/api";
    await spire.createEntry({ spiffeId: apiId, parentId: spire.agentId, selectors: [`k8s:pod-uid:${api0.uid}`] });
    await spire.createEntry({ spiffeId: apiId, parentId: spire.agentId, selectors: ["k8s:ns:shop", `k8s:pod-uid:${api2.uid}`] });
    const served = [await kubelet.publish(api0, "svid", {}, { maxAttempts: 10, maxDelayMs: 2000 }), await kubelet.publish(api2, "svid", {}, { maxAttempts: 10, maxDelayMs: 2000 })];
    for (const volume of served) assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, apiId);
    // A sibling pod with the same namespace and service account is covered by neither entry.
    const sibling = await kubelet.tryPublish(api1, "svid", {}, { maxAttempts: 1 });
    assert.equal(sibling.error?.code, Code.DeadlineExceeded, sibling.error?.message);
    for (const volume of served) await kubelet.unpublish(volume);
  });

  test("agent killed and restarted: files never go away, streams recover, rotation continues", async () => {
    const before = await readVolumeIdentity(volumes[0]!.targetPath);
    await spire.stopAgent("SIGKILL");
    for (let i = 0; i < 6; i++) {
      await sleep(500);
      assert.equal((await readVolumeIdentity(volumes[0]!.targetPath)).serialNumber, before.serialNumber, "files stay while the agent is down");
    }
    const mark = driver.logs.length;
    await spire.startAgent(undefined);
    const rotated = await waitForNewSerial(volumes[0]!.targetPath, before.serialNumber, ttlSeconds * 1000 + 10_000);
    assert.equal(rotated.spiffeId, webId);
    assert.ok(driver.logs.slice(mark).some((line) => line.msg === "identity files rotated"), "rotated by the resubscribed stream");
  });

  test("driver SIGKILLed and restarted: every volume re-adopted and still rotating", async () => {
    const before = await Promise.all(volumes.map((volume) => readVolumeIdentity(volume.targetPath)));
    await driver.stop("SIGKILL");
    const mark = driver.logs.length;
    await driver.start();
    const adoption = await driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, mark);
    assert.equal(adoption.adopted, volumes.length);
    for (const volume of volumes) {
      await driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rewritten after restart", 15_000, mark);
    }
    const after = await Promise.all(volumes.map((volume, i) => waitForNewSerial(volume.targetPath, before[i]!.serialNumber, ttlSeconds * 1000 + 5_000)));
    assert.deepEqual(after.map((identity) => identity.spiffeId), [webId, dbId]);
    for (const volume of volumes.splice(0)) await kubelet.unpublish(volume);
    assert.deepEqual((await readdir(join(dir, "meta"))).filter((name) => name.endsWith(".json")), [], "no records left");
    assert.deepEqual((await readFile(join(dir, "driver.log"), "utf8")).match(/PRIVATE KEY/g), null, "no key material in the logs");
  });
});
