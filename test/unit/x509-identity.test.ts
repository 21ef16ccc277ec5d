import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { SubscribeToX509SVIDsResponseSchema } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { SvidCheckCache } from "../../src/spire/svid-check-cache.js";
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

test("SVID checks are shared by content: the same SVID on many streams is checked once, a changed key or the clock is never answered from the cache", async () => {
  const ca = await createTestCa({ trustDomain: "example.org" });
  const web = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web", ttlSeconds: 600 });
  const other = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web", ttlSeconds: 600 });
  const message = (key: Uint8Array) =>
    create(SubscribeToX509SVIDsResponseSchema, {
      x509Svids: [{ x509Svid: { certChain: web.certChainDer, id: { trustDomain: "example.org", path: "/web" }, expiresAt: BigInt(web.expiresAt) }, x509SvidKey: key }],
    });
  const checks = new SvidCheckCache();
  for (let stream = 0; stream < 3; stream++) {
    assert.deepEqual(parseX509SvidSet(message(web.keyPkcs8Der), Date.now(), checks).identities.map((identity) => identity.spiffeId), ["spiffe://example.org/web"]);
  }
  assert.equal(checks.size, 1, "three streams with one SVID: one check");
  // The same leaf with another SVID's key: a new check, which fails.
  const swapped = parseX509SvidSet(message(other.keyPkcs8Der), Date.now(), checks);
  assert.deepEqual(swapped.identities, []);
  assert.deepEqual(swapped.rejected, [{ spiffeId: "spiffe://example.org/web", reason: "private key does not match the leaf certificate" }]);
  // Expiry is judged at each message, not when the check was cached.
  const afterExpiry = parseX509SvidSet(message(web.keyPkcs8Der), (web.expiresAt + 60) * 1000, checks);
  assert.deepEqual(afterExpiry.identities, []);
  assert.match(afterExpiry.rejected[0]!.reason, /^leaf expired at /);
});

test("the SVID check cache keeps at most its capacity, dropping the least recently used", () => {
  const checks = new SvidCheckCache(2);
  const run = (reason: string) => () => ({ ok: false as const, reason });
  const key = new Uint8Array([1]);
  checks.check("spiffe://a/1", [new Uint8Array([1])], key, run("first"));
  checks.check("spiffe://a/2", [new Uint8Array([2])], key, run("second"));
  // Used again, so the second is now the least recently used.
  assert.deepEqual(checks.check("spiffe://a/1", [new Uint8Array([1])], key, run("not run")), { ok: false, reason: "first" });
  checks.check("spiffe://a/3", [new Uint8Array([3])], key, run("third"));
  assert.equal(checks.size, 2);
  assert.deepEqual(checks.check("spiffe://a/1", [new Uint8Array([1])], key, run("not run")), { ok: false, reason: "first" });
  assert.deepEqual(checks.check("spiffe://a/2", [new Uint8Array([2])], key, run("checked again")), { ok: false, reason: "checked again" });
  // The same bytes split differently between certificates are another SVID.
  assert.deepEqual(checks.check("spiffe://a/9", [new Uint8Array([1, 2])], key, run("joined")), { ok: false, reason: "joined" });
  assert.deepEqual(checks.check("spiffe://a/9", [new Uint8Array([1]), new Uint8Array([2])], key, run("split")), { ok: false, reason: "split" });
});
