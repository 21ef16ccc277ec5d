/**
 * Our protos (proto/ → src/gen) against a real SPIRE v1.15.3 agent's Delegated Identity API,
 * without the driver: the wire format, the agent's behaviour the driver relies on (DESIGN.md §3),
 * and the exact errors it returns. Measured timings are printed as test diagnostics.
 *
 *   node --import tsx --test test/e2e/spire-smoke.test.ts
 */
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, verify as verifySignature, X509Certificate, type JsonWebKey } from "node:crypto";
import { after, before, describe, test, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type { SubscribeToX509SVIDsResponse } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { delegatedIdentityClient, SpireFixture, startSpire, type DelegatedIdentityClient } from "../support/spire-fixture.js";

const webId = "spiffe://example.org/ns/demo/sa/web";
const webSelectors = [
  { type: "k8s", value: "ns:demo" },
  { type: "k8s", value: "sa:web" },
];

/** Splits concatenated DER certificates (SubscribeToX509BundlesResponse.ca_certificates values). */
function splitDer(bytes: Uint8Array): X509Certificate[] {
  const certs: X509Certificate[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    assert.equal(bytes[offset], 0x30, "each certificate starts with an ASN.1 SEQUENCE");
    let length = bytes[offset + 1]!;
    let header = 2;
    if (length & 0x80) {
      const octets = length & 0x7f;
      length = 0;
      for (let i = 0; i < octets; i++) length = length * 256 + bytes[offset + 2 + i]!;
      header += octets;
    }
    certs.push(new X509Certificate(Buffer.from(bytes.subarray(offset, offset + header + length))));
    offset += header + length;
  }
  return certs;
}

function svidIds(message: SubscribeToX509SVIDsResponse): string[] {
  return message.x509Svids.map((s) => `spiffe://${s.x509Svid?.id?.trustDomain}${s.x509Svid?.id?.path}`);
}

function leafOf(message: SubscribeToX509SVIDsResponse, index = 0): X509Certificate {
  return new X509Certificate(Buffer.from(message.x509Svids[index]!.x509Svid!.certChain[0]!));
}

/** next() of an async iterator, failing after `ms`. */
async function nextWithin<T>(iterator: AsyncIterator<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    const result = await Promise.race([iterator.next(), timeout]);
    if (result.done) throw new Error(`stream ended before ${what}`);
    return result.value;
  } finally {
    clearTimeout(timer);
  }
}

function decodeJwtPart(part: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as Record<string, unknown>;
}

/** Verifies a JWS (ES256/384/512, RS256/384/512, PS256/384/512) against a JWKS; returns the key id used. */
function verifyJwt(token: string, jwks: { keys: (JsonWebKey & { kid?: string })[] }): string {
  const [h, p, s] = token.split(".");
  const header = decodeJwtPart(h!) as { alg: string; kid: string };
  const jwk = jwks.keys.find((key) => key.kid === header.kid);
  assert.ok(jwk, `JWKS has the token's kid ${header.kid}`);
  const hash = `sha${header.alg.slice(2)}`;
  const key = createPublicKey({ key: jwk, format: "jwk" });
  const options = header.alg.startsWith("ES")
    ? { key, dsaEncoding: "ieee-p1363" as const }
    : header.alg.startsWith("PS")
      ? { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: Number(header.alg.slice(2)) / 8 }
      : { key };
  assert.ok(verifySignature(hash, Buffer.from(`${h}.${p}`), options, Buffer.from(s!, "base64url")), `${header.alg} signature verifies`);
  return header.kid;
}

/** Runs `fn`; on failure, adds the SPIRE log tails to the diagnostics. */
async function withLogs(t: TestContext, spire: SpireFixture, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (error) {
    t.diagnostic(await spire.logTails(40));
    throw error;
  }
}

async function rpcError(call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (error) {
    return ConnectError.from(error);
  }
  assert.fail("the call succeeded");
}

describe("Delegated Identity API of a real SPIRE v1.15.3 agent (driver authorized)", { timeout: 5 * 60_000 }, () => {
  let spire: SpireFixture;
  let client: DelegatedIdentityClient;
  const abort = new AbortController();

  before(async () => {
    spire = await startSpire();
    client = delegatedIdentityClient(spire.adminSocket);
    await spire.registerDelegate();
  });

  after(async () => {
    abort.abort();
    await spire?.stop();
  });

  test("SubscribeToX509SVIDs: k8s selectors yield the entry's SVID; key matches; the X.509 bundle verifies it", async (t) => {
    await withLogs(t, spire, async () => {
      const created = Date.now();
      await spire.createEntry({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
      // The delegate entry and this one reach the agent on its next sync; until then the agent
      // answers PermissionDenied (delegate unknown) or an empty set (entry unknown).
      let message: SubscribeToX509SVIDsResponse | undefined;
      const seen: string[] = [];
      while (!message) {
        assert.ok(Date.now() - created < 30_000, `no SVID within 30 s; saw ${seen.join(" | ")}`);
        try {
          const stream = client.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: AbortSignal.any([abort.signal, AbortSignal.timeout(5_000)]) });
          for await (const m of stream) {
            if (m.x509Svids.length > 0) {
              message = m;
              break;
            }
            if (seen.at(-1) !== "empty") seen.push("empty");
          }
        } catch (error) {
          const e = ConnectError.from(error);
          const text = `${Code[e.code]}: ${e.rawMessage}`;
          if (seen.at(-1) !== text) seen.push(text);
          await sleep(100);
        }
      }
      t.diagnostic(`first SVID ${Date.now() - created} ms after entry create (before that: ${seen.join(" | ") || "nothing"})`);

      assert.deepEqual(svidIds(message), [webId]);
      const svid = message.x509Svids[0]!;
      const leaf = leafOf(message);
      assert.equal(leaf.subjectAltName, `URI:${webId}`);
      assert.equal(svid.x509Svid!.expiresAt, BigInt(Math.floor(new Date(leaf.validTo).getTime() / 1000)));
      const key = createPrivateKey({ key: Buffer.from(svid.x509SvidKey), format: "der", type: "pkcs8" });
      assert.ok(leaf.checkPrivateKey(key), "x509_svid_key (PKCS#8 DER) is the leaf's key");
      t.diagnostic(`chain length ${svid.x509Svid!.certChain.length}, key ${key.asymmetricKeyType}, hint "${svid.x509Svid!.hint}", federates_with [${message.federatesWith.join(", ")}]`);

      const bundles = client.subscribeToX509Bundles({}, { signal: abort.signal })[Symbol.asyncIterator]();
      const bundleMessage = await nextWithin(bundles, 10_000, "X.509 bundle message");
      await bundles.return?.();
      assert.deepEqual(Object.keys(bundleMessage.caCertificates), ["spiffe://example.org"]);
      const roots = splitDer(bundleMessage.caCertificates["spiffe://example.org"]!);
      assert.ok(roots.length >= 1);
      const chain = svid.x509Svid!.certChain.map((der) => new X509Certificate(Buffer.from(der)));
      for (let i = 0; i + 1 < chain.length; i++) assert.ok(chain[i]!.verify(chain[i + 1]!.publicKey), `chain[${i}] signed by chain[${i + 1}]`);
      const top = chain.at(-1)!;
      assert.ok(
        roots.some((root) => top.checkIssued(root) && top.verify(root.publicKey)),
        "the bundle's root signed the chain",
      );
      t.diagnostic(`bundle for spiffe://example.org: ${roots.length} CA cert(s)`);
    });
  });

  test("SubscribeToX509SVIDs: no matching entry → an empty x509_svids at once; the stream stays open and pushes a later entry", async (t) => {
    await withLogs(t, spire, async () => {
      const selectors = [{ type: "k8s", value: "ns:nobody" }, { type: "k8s", value: "sa:nobody" }];
      const opened = Date.now();
      const stream = client.subscribeToX509SVIDs({ selectors }, { signal: abort.signal })[Symbol.asyncIterator]();
      try {
        const first = await nextWithin(stream, 10_000, "first message");
        const firstMs = Date.now() - opened;
        t.diagnostic(`first message after ${firstMs} ms: ${first.x509Svids.length} SVIDs`);
        assert.equal(first.x509Svids.length, 0);
        assert.deepEqual(first.federatesWith, []);

        // Nothing more while nothing changes.
        let pending: Promise<IteratorResult<SubscribeToX509SVIDsResponse>> | undefined = stream.next();
        const quiet = await Promise.race([pending.then(() => "message"), sleep(3_000).then(() => "quiet")]);
        assert.equal(quiet, "quiet", "no further message without a change");
        const created = Date.now();
        await spire.createEntry({ spiffeId: "spiffe://example.org/ns/nobody/sa/nobody", selectors: ["k8s:ns:nobody", "k8s:sa:nobody"] });
        let later: SubscribeToX509SVIDsResponse | undefined;
        const messages: number[] = [];
        while (!later) {
          const next = pending ?? stream.next();
          pending = undefined;
          const m = await nextWithin({ next: () => next }, 20_000, "the later entry's SVID");
          messages.push(m.x509Svids.length);
          if (m.x509Svids.length > 0) later = m;
        }
        t.diagnostic(`later entry pushed ${Date.now() - created} ms after entry create (message sizes: ${messages.join(",")})`);
        assert.deepEqual(svidIds(later), ["spiffe://example.org/ns/nobody/sa/nobody"]);
      } finally {
        await stream.return?.();
      }
    });
  });

  test("FetchJWTSVIDs: no matching entry → PermissionDenied (same text as an unauthorized caller)", async (t) => {
    await withLogs(t, spire, async () => {
      const error = await rpcError(() => client.fetchJWTSVIDs({ audience: ["test"], selectors: [{ type: "k8s", value: "ns:ghost" }] }, { signal: abort.signal }));
      t.diagnostic(`FetchJWTSVIDs, no entry: ${Code[error.code]} (${error.code}) "${error.rawMessage}"`);
      assert.equal(error.code, Code.PermissionDenied);
      assert.equal(error.rawMessage, "no identity issued");

      const noAudience = await rpcError(() => client.fetchJWTSVIDs({ audience: [], selectors: webSelectors }, { signal: abort.signal }));
      t.diagnostic(`FetchJWTSVIDs, no audience: ${Code[noAudience.code]} "${noAudience.rawMessage}"`);
      assert.equal(noAudience.code, Code.InvalidArgument);

      const both = await rpcError(async () => {
        for await (const _ of client.subscribeToX509SVIDs({ selectors: webSelectors, pid: 1 }, { signal: abort.signal })) break;
      });
      t.diagnostic(`SubscribeToX509SVIDs with selectors and pid: ${Code[both.code]} "${both.rawMessage}"`);
      assert.equal(both.code, Code.InvalidArgument);
    });
  });

  test("FetchJWTSVIDs: audience test → a token whose sub is the SPIFFE ID; SubscribeToJWTBundles → JWKS that verifies it", async (t) => {
    await withLogs(t, spire, async () => {
      await spire.waitForEntryOnAgent({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
      const started = Date.now();
      const response = await client.fetchJWTSVIDs({ audience: ["test"], selectors: webSelectors }, { signal: abort.signal });
      t.diagnostic(`FetchJWTSVIDs took ${Date.now() - started} ms`);
      assert.equal(response.svids.length, 1);
      const svid = response.svids[0]!;
      assert.equal(`spiffe://${svid.id?.trustDomain}${svid.id?.path}`, webId);
      const [header, payload] = svid.token.split(".").slice(0, 2).map(decodeJwtPart);
      assert.equal(payload!.sub, webId);
      assert.deepEqual([payload!.aud].flat(), ["test"]);
      assert.equal(BigInt(payload!.exp as number), svid.expiresAt);
      assert.equal(BigInt(payload!.iat as number), svid.issuedAt);
      t.diagnostic(`JWT alg ${header!.alg}, typ ${header!.typ}, lifetime ${Number(svid.expiresAt - svid.issuedAt)} s`);

      const again = await client.fetchJWTSVIDs({ audience: ["test"], selectors: webSelectors }, { signal: abort.signal });
      t.diagnostic(`second FetchJWTSVIDs returns the ${again.svids[0]!.token === svid.token ? "same (cached)" : "a new"} token`);

      const bundles = client.subscribeToJWTBundles({}, { signal: abort.signal })[Symbol.asyncIterator]();
      const message = await nextWithin(bundles, 10_000, "JWT bundle message");
      await bundles.return?.();
      assert.deepEqual(Object.keys(message.bundles), ["spiffe://example.org"]);
      const jwks = JSON.parse(Buffer.from(message.bundles["spiffe://example.org"]!).toString("utf8")) as { keys: (JsonWebKey & { kid?: string; use?: string })[] };
      assert.ok(Array.isArray(jwks.keys) && jwks.keys.length > 0, "JWKS has keys");
      t.diagnostic(`JWKS top-level keys [${Object.keys(jwks).join(", ")}], ${jwks.keys.length} key(s), use [${jwks.keys.map((k) => k.use).join(", ")}]`);
      assert.ok(jwks.keys.every((k) => k.use === undefined || k.use === "jwt-svid"), "no x509-svid keys in the JWT bundle");
      verifyJwt(svid.token, jwks);
    });
  });

  test("rotation: with x509SvidTtl 30 a new serial arrives on the open stream", { timeout: 90_000 }, async (t) => {
    await withLogs(t, spire, async () => {
      const id = "spiffe://example.org/ns/demo/sa/rotating";
      await spire.createEntry({ spiffeId: id, selectors: ["k8s:ns:demo", "k8s:sa:rotating"], x509SvidTtl: 30 });
      const selectors = ["k8s:ns:demo", "k8s:sa:rotating"];
      await spire.waitForEntryOnAgent({ spiffeId: id, selectors });
      const opened = Date.now();
      const stream = client
        .subscribeToX509SVIDs({ selectors: selectors.map((s) => ({ type: "k8s", value: s.slice(4) })) }, { signal: abort.signal })
        [Symbol.asyncIterator]();
      try {
        const first = await nextWithin(stream, 10_000, "first SVID");
        const firstLeaf = leafOf(first);
        const lifetime = (new Date(firstLeaf.validTo).getTime() - new Date(firstLeaf.validFrom).getTime()) / 1000;
        t.diagnostic(`first SVID serial ${firstLeaf.serialNumber}, notBefore ${firstLeaf.validFrom}, lifetime ${lifetime} s`);
        const log: string[] = [];
        for (;;) {
          const m = await nextWithin(stream, 45_000, "a rotated SVID");
          const leaf = leafOf(m);
          log.push(`${Date.now() - opened}ms:${m.x509Svids.length}:${leaf.serialNumber === firstLeaf.serialNumber ? "same" : "new"}`);
          if (leaf.serialNumber !== firstLeaf.serialNumber) {
            const sinceIssue = (Date.now() - new Date(firstLeaf.validFrom).getTime()) / 1000;
            t.diagnostic(
              `rotated SVID after ${Date.now() - opened} ms on the stream, ~${sinceIssue.toFixed(1)} s after the first one's notBefore ` +
                `(notBefore is backdated by SPIRE; messages: ${log.join(" ")})`,
            );
            assert.equal(leaf.subjectAltName, `URI:${id}`);
            assert.ok(leaf.checkPrivateKey(createPrivateKey({ key: Buffer.from(m.x509Svids[0]!.x509SvidKey), format: "der", type: "pkcs8" })));
            break;
          }
        }
      } finally {
        await stream.return?.();
      }
    });
  });

  test("restartAgent: the admin socket comes back and streams can be reopened", async (t) => {
    await withLogs(t, spire, async () => {
      const stream = client.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: abort.signal })[Symbol.asyncIterator]();
      await nextWithin(stream, 10_000, "first SVID");
      const pid = spire.agentPid;
      const stopped = Date.now();
      const ended = stream.next().then(
        (r) => (r.done ? "ended cleanly" : "message"),
        (e: unknown) => `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).rawMessage}`,
      );
      await spire.restartAgent();
      t.diagnostic(`agent restarted (pid ${pid} → ${spire.agentPid}) in ${Date.now() - stopped} ms; the open stream: ${await ended}`);
      assert.notEqual(spire.agentPid, pid);
      const fresh = delegatedIdentityClient(spire.adminSocket);
      const reopened = Date.now();
      const again = await spire.waitForEntryOnAgent({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
      t.diagnostic(`after restart the SVID is served again ${again} ms later (${Date.now() - reopened} ms)`);
      const message = await nextWithin(fresh.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: abort.signal })[Symbol.asyncIterator](), 10_000, "SVID");
      assert.deepEqual(svidIds(message), [webId]);
    });
  });

  test("deleteEntry: the open stream is told with an empty x509_svids", async (t) => {
    await withLogs(t, spire, async () => {
      const id = "spiffe://example.org/ns/demo/sa/short-lived";
      const selectors = ["k8s:ns:demo", "k8s:sa:short-lived"];
      const entryId = await spire.createEntry({ spiffeId: id, selectors });
      await spire.waitForEntryOnAgent({ spiffeId: id, selectors });
      const stream = client.subscribeToX509SVIDs({ selectors: selectors.map((s) => ({ type: "k8s", value: s.slice(4) })) }, { signal: abort.signal })[Symbol.asyncIterator]();
      try {
        assert.deepEqual(svidIds(await nextWithin(stream, 10_000, "SVID")), [id]);
        const deleted = Date.now();
        await spire.deleteEntry(entryId);
        const m = await nextWithin(stream, 20_000, "message after delete");
        t.diagnostic(`after deleteEntry: ${m.x509Svids.length} SVIDs, ${Date.now() - deleted} ms after delete`);
        assert.equal(m.x509Svids.length, 0);
      } finally {
        await stream.return?.();
      }
    });
  });

  test("killAgent (SIGKILL): what an open stream sees; startAgent serves again", async (t) => {
    await withLogs(t, spire, async () => {
      const stream = client.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: abort.signal })[Symbol.asyncIterator]();
      await nextWithin(stream, 10_000, "first SVID");
      const ended = stream.next().then(
        (r) => (r.done ? "ended cleanly" : "message"),
        (e: unknown) => `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).rawMessage}`,
      );
      const killed = Date.now();
      await spire.killAgent();
      t.diagnostic(`open stream after SIGKILL: ${await ended} (${Date.now() - killed} ms)`);
      const refused = await rpcError(() => client.fetchJWTSVIDs({ audience: ["test"], selectors: webSelectors }, { signal: AbortSignal.timeout(5_000) }));
      t.diagnostic(`a call while the agent is down (stale socket file): ${Code[refused.code]}: ${refused.rawMessage}`);
      const restarted = Date.now();
      await spire.startAgent();
      t.diagnostic(`startAgent after SIGKILL took ${Date.now() - restarted} ms`);
      await spire.waitForEntryOnAgent({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
      const again = await nextWithin(client.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: abort.signal })[Symbol.asyncIterator](), 10_000, "SVID");
      assert.deepEqual(svidIds(again), [webId], "the same client (a new connection) works again");
    });
  });
});

describe("Delegated Identity API of a real SPIRE v1.15.3 agent (caller not an authorized delegate)", { timeout: 3 * 60_000 }, () => {
  let spire: SpireFixture;
  let client: DelegatedIdentityClient;

  before(async () => {
    spire = await startSpire({ authorizedDelegates: ["spiffe://example.org/someone-else"] });
    client = delegatedIdentityClient(spire.adminSocket);
    await spire.createEntry({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
  });

  after(() => spire?.stop());

  const describeError = (e: ConnectError) => `${Code[e.code]} (${e.code}) rawMessage="${e.rawMessage}" message="${e.message}"`;
  const subscribeError = () =>
    rpcError(async () => {
      for await (const _ of client.subscribeToX509SVIDs({ selectors: webSelectors }, { signal: AbortSignal.timeout(10_000) })) break;
    });

  test("no entry for the caller → PermissionDenied 'no identity issued'; with an entry that is not authorized → 'caller not configured as an authorized delegate'", async (t) => {
    await withLogs(t, spire, async () => {
      const noEntry = await subscribeError();
      t.diagnostic(`SubscribeToX509SVIDs, caller has no entry: ${describeError(noEntry)}`);
      assert.equal(noEntry.code, Code.PermissionDenied);
      assert.equal(noEntry.rawMessage, "no identity issued");
      for (const [name, call] of [
        ["SubscribeToX509Bundles", async () => { for await (const _ of client.subscribeToX509Bundles({}, { signal: AbortSignal.timeout(10_000) })) break; }],
        ["SubscribeToJWTBundles", async () => { for await (const _ of client.subscribeToJWTBundles({}, { signal: AbortSignal.timeout(10_000) })) break; }],
        ["FetchJWTSVIDs", () => client.fetchJWTSVIDs({ audience: ["test"], selectors: webSelectors }, { signal: AbortSignal.timeout(10_000) })],
      ] as const) {
        const error = await rpcError(call);
        t.diagnostic(`${name}, caller has no entry: ${describeError(error)}`);
        assert.equal(error.code, Code.PermissionDenied);
        assert.equal(error.rawMessage, "no identity issued");
      }

      // The caller gets an identity, but not one in authorized_delegates.
      const created = Date.now();
      await spire.registerDelegate();
      let error = noEntry;
      while (error.rawMessage === "no identity issued") {
        assert.ok(Date.now() - created < 30_000, "the caller's entry did not reach the agent within 30 s");
        await sleep(100);
        error = await subscribeError();
      }
      t.diagnostic(`caller's entry seen by the agent ${Date.now() - created} ms after entry create`);
      t.diagnostic(`SubscribeToX509SVIDs, caller registered as ${spire.delegateId} but not authorized: ${describeError(error)}`);
      assert.equal(error.code, Code.PermissionDenied);
      assert.equal(error.rawMessage, "caller not configured as an authorized delegate");
      const jwt = await rpcError(() => client.fetchJWTSVIDs({ audience: ["test"], selectors: webSelectors }, { signal: AbortSignal.timeout(10_000) }));
      t.diagnostic(`FetchJWTSVIDs, not authorized: ${describeError(jwt)}`);
      assert.equal(jwt.rawMessage, "caller not configured as an authorized delegate");
      const log = await import("node:fs/promises").then((fs) => fs.readFile(spire.agentLog, "utf8"));
      const line = log.split("\n").find((l) => l.includes("not configured as an authorized delegate"));
      t.diagnostic(`agent log: ${line}`);
    });
  });
});
