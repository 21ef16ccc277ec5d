import assert from "node:assert/strict";
import { test } from "node:test";
import { renderBundleOnlyFiles, renderVolumeFiles, trustBundleFileName } from "../../src/files/volume-files.js";
import { parseX509SvidSet } from "../../src/spire/x509-identity.js";
import { splitDerCertificates } from "../../src/spire/der.js";
import { parseVolumeAttributes } from "../../src/volume/volume-attributes.js";
import { create } from "@bufbuild/protobuf";
import { SubscribeToX509SVIDsResponseSchema } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { createTestCa } from "../support/test-ca.js";

const fileContent = (files: { name: string; content: string | Uint8Array }[], name: string) => {
  const file = files.find((candidate) => candidate.name === name);
  assert.ok(file, `${name} is written`);
  return String(file.content);
};

test("bundle files follow every bundle change although each bundle's PEM is rendered once for all volumes", async () => {
  const ca = await createTestCa({ trustDomain: "example.org" });
  const partner = await createTestCa({ trustDomain: "partner.example" });
  const svid = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web" });
  const [identity] = parseX509SvidSet(
    create(SubscribeToX509SVIDsResponseSchema, {
      x509Svids: [{ x509Svid: { certChain: svid.certChainDer, id: { trustDomain: "example.org", path: "/web" }, expiresAt: BigInt(svid.expiresAt) }, x509SvidKey: svid.keyPkcs8Der }],
    }),
  ).identities;
  const merged = parseVolumeAttributes({ "csi.spire.io/federated-bundles": "merge" }).attributes;
  const separate = parseVolumeAttributes({ "csi.spire.io/federated-bundles": "files" }).attributes;
  // As the bundle feed hands them out: every agent message decodes into new arrays.
  const feedMessage = () =>
    new Map([
      ["example.org", splitDerCertificates(ca.bundleDer())],
      ["partner.example", splitDerCertificates(partner.bundleDer())],
    ]);
  const render = (bundles: ReturnType<typeof feedMessage>) => ({
    merged: renderVolumeFiles(merged, { identity: identity!, allIdentities: [identity!], bundles, federatesWith: ["partner.example"], jwtTokens: new Map(), jwtBundles: new Map() }),
    separate: renderVolumeFiles(separate, { identity: identity!, allIdentities: [identity!], bundles, federatesWith: ["partner.example"], jwtTokens: new Map(), jwtBundles: new Map() }),
    bundleOnly: renderBundleOnlyFiles(separate, "example.org", bundles),
  });

  const before = render(feedMessage());
  assert.equal(fileContent(before.merged, "ca.crt"), ca.rootsPem() + partner.rootsPem());
  assert.equal(fileContent(before.separate, "ca.crt"), ca.rootsPem());

  await ca.addRoot();
  await partner.addRoot();
  const after = render(feedMessage());
  assert.equal(fileContent(after.merged, "ca.crt"), ca.rootsPem() + partner.rootsPem());
  assert.equal(fileContent(after.separate, "ca.crt"), ca.rootsPem());
  assert.equal(fileContent(after.separate, trustBundleFileName("partner.example")), partner.rootsPem());
  assert.equal(fileContent(after.bundleOnly, "ca.crt"), ca.rootsPem());
  assert.equal(fileContent(after.bundleOnly, trustBundleFileName("partner.example")), partner.rootsPem());
  assert.notEqual(fileContent(after.merged, "ca.crt"), fileContent(before.merged, "ca.crt"));
});
