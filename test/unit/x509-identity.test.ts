import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { SubscribeToX509SVIDsResponseSchema } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { parseX509SvidSet } from "../../src/spire/x509-identity.js";
import { createTestCa } from "../support/test-ca.js";

test("an SVID whose trust domain is not a valid SPIFFE name is rejected; invalid federates_with entries are dropped and counted", async () => {
  const ca = await createTestCa({ trustDomain: "example.org" });
  const good = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web" });
  // The leaf's URI SAN says what the agent claims, so only the name check stops it.
  const hostile = await ca.issueX509Svid({ spiffeId: "spiffe://..evil/web" });
  const response = create(SubscribeToX509SVIDsResponseSchema, {
    x509Svids: [
      { x509Svid: { certChain: good.certChainDer, id: { trustDomain: "example.org", path: "/web" }, expiresAt: BigInt(good.expiresAt) }, x509SvidKey: good.keyPkcs8Der },
      { x509Svid: { certChain: hostile.certChainDer, id: { trustDomain: "..evil", path: "/web" }, expiresAt: BigInt(hostile.expiresAt) }, x509SvidKey: hostile.keyPkcs8Der },
    ],
    federatesWith: ["spiffe://partner.example", "spiffe://../../escape", "spiffe://Partner.Example"],
  });
  const set = parseX509SvidSet(response);
  assert.deepEqual(set.identities.map((identity) => identity.spiffeId), ["spiffe://example.org/web"]);
  assert.deepEqual(set.rejected, [{ spiffeId: "spiffe://..evil/web", reason: "its trust domain is not a valid SPIFFE trust domain name" }]);
  assert.deepEqual(set.federatesWith, ["partner.example"]);
  assert.equal(set.invalidFederations, 2);
});
