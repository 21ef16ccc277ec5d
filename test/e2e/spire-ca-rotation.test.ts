/**
 * The server CA rotated by hand under live volumes, against real SPIRE v1.15.3: `localauthority
 * x509 prepare` → `activate` → `taint` → `revoke`, while a reader process checks that each
 * volume's key, certificate and bundle always form one consistent set (RELIABILITY.md,
 * "Agent-side changes" 2).
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { pemBlocks, readVolumeIdentity } from "../support/identity-files.js";
import type { PublishedVolume } from "../support/kubelet-sim.js";
import { SpireFixture } from "../support/spire-fixture.js";
import { startTornReader, type TornReader } from "../support/torn-reader-process.js";
import { waitUntil } from "../support/wait-until.js";

const pod = { uid: "ca11bb22-0000-4000-8000-000000000001", name: "rotating-0", namespace: "ca", serviceAccount: "app" };
const spiffeId = "spiffe://example.org/ns/ca/sa/app";
// Long enough that the agent does not rotate on its own during the test: after `activate` the
// SVID still comes from the old CA, so only `taint` can explain its re-issue from the new one.
const ttlSeconds = 600;

interface LocalAuthorities {
  active?: { authority_id: string };
  prepared?: { authority_id: string };
  old?: { authority_id: string };
}

/** A bundle as a sorted list of base64 DER certificates, for comparing sets. */
function certificateSet(pem: string): string[] {
  return pemBlocks(pem)
    .map((block) => block.der.toString("base64"))
    .sort();
}

describe("server CA rotation (prepare, activate, taint, revoke) under a torn-read checker (real SPIRE)", { timeout: 6 * 60_000 }, () => {
  let spire: SpireFixture;
  let node: DriverNode;
  let reader: TornReader | undefined;
  const volumes: PublishedVolume[] = [];
  /** The bundle file of each volume's layout: kubernetes-tls, then spiffe-fs. */
  const bundleFiles = ["ca.crt", "example.org.trust-bundle.pem"];

  const authorities = async () => JSON.parse(await spire.serverCli(["localauthority", "x509", "show", "-output", "json"])) as LocalAuthorities;
  const serverBundle = async () => certificateSet(await spire.serverCli(["bundle", "show", "-format", "pem"]));
  const leafOf = async (volume: PublishedVolume) => new X509Certificate(pemBlocks(await readFile(join(volume.targetPath, "tls.crt"), "utf8"))[0]!.der);
  /** Waits until every volume's bundle file holds exactly the server's CAs; returns them. */
  const bundleFilesMatchServer = async (step: string) => {
    const expected = await serverBundle();
    for (const [index, volume] of volumes.entries()) {
      const bundleFile = join(volume.targetPath, bundleFiles[index]!);
      await waitUntil(`${step}: ${bundleFile} holds the server's ${expected.length} CA(s)`, async () => {
        // Key, certificate and bundle must still belong together (the reader checks the spiffe-fs volume).
        if (index === 0) await readVolumeIdentity(volume.targetPath);
        return JSON.stringify(certificateSet(await readFile(bundleFile, "utf8"))) === JSON.stringify(expected);
      });
    }
    return expected.map((der) => new X509Certificate(Buffer.from(der, "base64")));
  };

  before(async () => {
    spire = await SpireFixture.start();
    await spire.registerDelegate();
    await spire.createEntry({ spiffeId, selectors: ["k8s:ns:ca", "k8s:sa:app"], x509SvidTtl: ttlSeconds });
    node = await startDriverNode(spire.adminSocket, { publishTimeout: "8s" });
    volumes.push(await node.kubelet.publish(pod, "tls", {}, { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true }));
    volumes.push(await node.kubelet.publish(pod, "fs", { "csi.spire.io/layout": "spiffe-fs" }, { maxAttempts: 20, maxDelayMs: 1000 }));
  });

  after(async () => {
    reader?.kill();
    try {
      await node?.close();
    } finally {
      await spire?.stop();
    }
  });

  test("each step's CAs reach the bundle files, taint re-issues the SVID from the new CA, revoke removes the old CA, no read is torn", async () => {
    reader = startTornReader([
      { kind: "snapshot", dir: volumes[0]!.targetPath },
      { kind: "spiffe-fs", dir: volumes[1]!.targetPath },
    ]);
    const [oldCa] = await bundleFilesMatchServer("before");
    assert.ok(oldCa);
    const firstLeaf = await leafOf(volumes[0]!);
    assert.ok(firstLeaf.verify(oldCa.publicKey), "the first SVID comes from the original CA");

    await spire.serverCli(["localauthority", "x509", "prepare"]);
    const prepared = await authorities();
    assert.ok(prepared.prepared?.authority_id, `prepare left a prepared authority: ${JSON.stringify(prepared)}`);
    const afterPrepare = await bundleFilesMatchServer("after prepare");
    assert.equal(afterPrepare.length, 2, "the prepared CA joins the bundle before it signs anything");
    const newCa = afterPrepare.find((ca) => ca.raw.toString("base64") !== oldCa.raw.toString("base64"))!;

    await spire.serverCli(["localauthority", "x509", "activate", "-authorityID", prepared.prepared!.authority_id]);
    const activated = await authorities();
    assert.equal(activated.active?.authority_id, prepared.prepared!.authority_id);
    assert.equal((await bundleFilesMatchServer("after activate")).length, 2, "both CAs stay trusted while SVIDs from the old one live");

    const beforeTaint = await readVolumeIdentity(volumes[0]!.targetPath);
    assert.ok((await leafOf(volumes[0]!)).verify(oldCa.publicKey), "activate alone does not re-issue a 600 s SVID");
    await spire.serverCli(["localauthority", "x509", "taint", "-authorityID", activated.old!.authority_id]);
    await waitUntil("after taint: the SVID is re-issued from the new CA", async () => {
      const identity = await readVolumeIdentity(volumes[0]!.targetPath);
      return identity.serialNumber !== beforeTaint.serialNumber && (await leafOf(volumes[0]!)).verify(newCa.publicKey);
    }, 60_000);
    await bundleFilesMatchServer("after taint");

    await spire.serverCli(["localauthority", "x509", "revoke", "-authorityID", activated.old!.authority_id]);
    const afterRevoke = await bundleFilesMatchServer("after revoke");
    assert.deepEqual(afterRevoke.map((ca) => ca.fingerprint256), [newCa.fingerprint256], "the old CA is gone from the bundle files");

    const counts = await reader.stop();
    assert.deepEqual(counts.errors, []);
    assert.equal(counts.mismatches, 0);
    assert.equal(counts.missing, 0);
    assert.ok(counts.reads > 0);
    const swaps = node.driver.logs.filter((line) => line.msg === "identity files rotated" || line.msg === "identity files updated (trust bundles or JWT-SVIDs)").length;
    console.log(`ca-rotation: ${counts.reads} consistent reads across ${swaps} snapshot swaps; mismatches ${counts.mismatches}, missing ${counts.missing}`);
  });
});
