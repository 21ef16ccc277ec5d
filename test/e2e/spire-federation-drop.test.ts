/**
 * A federated trust domain dropping out under live volumes, against real SPIRE v1.15.3: first the
 * entry's federatesWith is cleared, then (federation restored) the domain's bundle is deleted.
 * Each time the next snapshot no longer holds that domain's files, no read is torn, and the SVID
 * keeps rotating (RELIABILITY.md, "Agent-side changes" 3).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { readVolumeIdentity, visibleFiles } from "../support/identity-files.js";
import type { PublishedVolume } from "../support/kubelet-sim.js";
import { SpireFixture } from "../support/spire-fixture.js";
import { startTornReader, type TornReader } from "../support/torn-reader-process.js";
import { waitUntil } from "../support/wait-until.js";

const pod = { uid: "fed1bb22-0000-4000-8000-000000000001", name: "fed-0", namespace: "fed", serviceAccount: "app" };
const spiffeId = "spiffe://example.org/ns/fed/sa/app";
const selectors = ["k8s:ns:fed", "k8s:sa:app"];
const ttlSeconds = 20;
const partnerFiles = ["partner.test.jwt-bundle.json", "partner.test.trust-bundle.pem"];

describe("a federated trust domain dropping out (real SPIRE)", { timeout: 6 * 60_000 }, () => {
  let spire: SpireFixture;
  let partner: SpireFixture;
  let node: DriverNode;
  let reader: TornReader | undefined;
  let entryId: string;
  const volumes: PublishedVolume[] = [];

  /** Rewrites the entry (SPIRE's `entry update` replaces every field): with or without the partner. */
  const updateEntry = (federates: boolean) =>
    spire.serverCli([
      "entry", "update", "-entryID", entryId, "-parentID", spire.agentId, "-spiffeID", spiffeId, "-x509SVIDTTL", String(ttlSeconds),
      ...selectors.flatMap((selector) => ["-selector", selector]),
      ...(federates ? ["-federatesWith", "spiffe://partner.test"] : []),
    ]);
  const partnerFilesIn = async (volume: PublishedVolume) => (await visibleFiles(volume.targetPath)).filter((name) => name.startsWith("partner.test."));
  const waitForPartnerFiles = async (step: string, expected: string[]) => {
    for (const volume of volumes) {
      await waitUntil(`${step}: ${volume.targetPath} holds [${expected.join(", ")}] for partner.test`, async () => JSON.stringify(await partnerFilesIn(volume)) === JSON.stringify(expected));
    }
  };
  const waitForRotation = async (step: string) => {
    const before = await readVolumeIdentity(volumes[0]!.targetPath);
    await waitUntil(`${step}: the SVID rotates on`, async () => (await readVolumeIdentity(volumes[0]!.targetPath)).serialNumber !== before.serialNumber, ttlSeconds * 1000 + 10_000);
  };

  before(async () => {
    [spire, partner] = await Promise.all([SpireFixture.start(), SpireFixture.start({ trustDomain: "partner.test", agent: false })]);
    await spire.bundleSet("partner.test", await partner.bundleShow());
    await spire.registerDelegate();
    entryId = await spire.createEntry({ spiffeId, selectors, x509SvidTtl: ttlSeconds, federatesWith: ["spiffe://partner.test"] });
    node = await startDriverNode(spire.adminSocket, { publishTimeout: "8s" });
    const retry = { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true };
    volumes.push(await node.kubelet.publish(pod, "tls", { "csi.spire.io/jwt-audiences": "fed" }, retry));
    volumes.push(await node.kubelet.publish(pod, "fs", { "csi.spire.io/layout": "spiffe-fs", "csi.spire.io/jwt-audiences": "fed" }, retry));
  });

  after(async () => {
    reader?.kill();
    try {
      await node?.close();
    } finally {
      await Promise.all([spire?.stop(), partner?.stop()]);
    }
  });

  test("the next snapshot drops the domain's files (federatesWith cleared, then bundle deleted), nothing torn, rotation continues", async () => {
    await waitForPartnerFiles("federated", partnerFiles);
    reader = startTornReader([
      { kind: "snapshot", dir: volumes[0]!.targetPath },
      { kind: "spiffe-fs", dir: volumes[1]!.targetPath },
    ]);

    await updateEntry(false);
    await waitForPartnerFiles("federatesWith cleared", []);
    await waitForRotation("federatesWith cleared");

    await updateEntry(true);
    await waitForPartnerFiles("federation restored", partnerFiles);

    await spire.serverCli(["bundle", "delete", "-id", "spiffe://partner.test", "-mode", "dissociate"]);
    await waitForPartnerFiles("bundle deleted", []);
    await waitForRotation("bundle deleted");
    for (const volume of volumes) {
      assert.deepEqual(await partnerFilesIn(volume), [], "no file of the dropped domain comes back");
    }

    const counts = await reader.stop();
    assert.deepEqual(counts.errors, []);
    assert.equal(counts.mismatches, 0);
    assert.equal(counts.missing, 0);
    assert.ok(counts.reads > 0);
    console.log(`federation-drop: ${counts.reads} consistent reads; mismatches ${counts.mismatches}, missing ${counts.missing}`);
  });
});
