import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { writeSnapshot } from "../../src/files/atomic-snapshot.js";
import { readIdentityInFiles } from "../../src/files/identity-in-files.js";
import { renderBundleOnlyFiles, renderVolumeFiles } from "../../src/files/volume-files.js";
import { splitDerCertificates } from "../../src/spire/der.js";
import { parseX509SvidSet } from "../../src/spire/x509-identity.js";
import { parseVolumeAttributes } from "../../src/volume/volume-attributes.js";
import { SubscribeToX509SVIDsResponseSchema } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { createTestCa } from "../support/test-ca.js";

test("the leaf a re-adopted volume's files hold is read through each layout's own file names; bundle-only holds none; a torn file is an error", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "held-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // An intermediate puts a second certificate after the leaf, and spiffe-fs puts the key before it.
  const ca = await createTestCa({ trustDomain: "example.org", withIntermediate: true });
  const svid = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web" });
  const [identity] = parseX509SvidSet(
    create(SubscribeToX509SVIDsResponseSchema, {
      x509Svids: [{ x509Svid: { certChain: svid.certChainDer, id: { trustDomain: "example.org", path: "/web" }, expiresAt: BigInt(svid.expiresAt) }, x509SvidKey: svid.keyPkcs8Der }],
    }),
  ).identities;
  const bundles = new Map([["example.org", splitDerCertificates(ca.bundleDer())]]);
  const expected = { spiffeId: "spiffe://example.org/web", serialNumber: identity!.serialNumber, expiresAt: svid.expiresAt };

  for (const layout of ["kubernetes-tls", "spiffe-helper", "spiffe-fs"]) {
    const { attributes } = parseVolumeAttributes({ "csi.spire.io/layout": layout });
    await writeSnapshot(dir, renderVolumeFiles(attributes, { identity: identity!, allIdentities: [identity!], bundles, federatesWith: [], jwtTokens: new Map(), jwtBundles: new Map() }), {});
    assert.deepEqual(await readIdentityInFiles(dir, attributes), expected, layout);
  }

  const bundleOnly = parseVolumeAttributes({ "csi.spire.io/bundle-only": "true" }).attributes;
  await writeSnapshot(dir, renderBundleOnlyFiles(bundleOnly, "example.org", bundles), {});
  assert.equal(await readIdentityInFiles(dir, bundleOnly), undefined);

  const kubernetesTls = parseVolumeAttributes({}).attributes;
  await assert.rejects(readIdentityInFiles(dir, kubernetesTls), { code: "ENOENT" });
  await writeSnapshot(dir, [{ name: "tls.crt", content: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", secret: false }], {});
  await assert.rejects(readIdentityInFiles(dir, kubernetesTls));
  await writeSnapshot(dir, [{ name: "tls.crt", content: "not a certificate\n", secret: false }], {});
  await assert.rejects(readIdentityInFiles(dir, kubernetesTls), /tls\.crt holds no CERTIFICATE block/);
});
