import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  DelegatedIdentity,
  type SubscribeToX509SVIDsResponse,
} from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { notAuthorizedMessage, startFakeAgent, type FakeAgent, type FakeEntry, type FakeAgentOptions } from "../support/fake-agent.js";

const web: FakeEntry = {
  id: "web",
  spiffeId: "spiffe://example.org/ns/demo/sa/web",
  selectors: [
    { type: "k8s", value: "ns:demo" },
    { type: "k8s", value: "sa:web" },
  ],
};
/** What the driver sends for a pod of `web`: more selectors than the entry needs. */
const webPodSelectors = [
  { type: "k8s", value: "ns:demo" },
  { type: "k8s", value: "sa:web" },
  { type: "k8s", value: "pod-uid:d9b2c4e0-0000-4000-8000-000000000001" },
  { type: "k8s", value: "node-name:test-node" },
];

/** Reads a server stream message by message with timeouts, without losing a message to a timeout. */
class StreamReader<T> {
  private pending: Promise<IteratorResult<T>> | undefined;

  constructor(private readonly iterator: AsyncIterator<T>) {}

  async next(timeoutMs = 5_000): Promise<T> {
    const result = await this.read(timeoutMs);
    if (result === "timeout") throw new Error(`no stream message within ${timeoutMs} ms`);
    if (result.done) throw new Error("the stream ended without a message");
    return result.value;
  }

  /** Asserts the stream stays silent (and open) for `ms`. */
  async expectSilence(ms: number): Promise<void> {
    const result = await this.read(ms);
    assert.equal(result, "timeout", "expected no message");
  }

  /** The status the stream ends with. */
  async error(timeoutMs = 5_000): Promise<ConnectError> {
    try {
      for (;;) {
        const result = await this.read(timeoutMs);
        if (result === "timeout") throw new Error(`the stream did not end within ${timeoutMs} ms`);
        if (result.done) throw new Error("the stream ended without an error");
      }
    } catch (error) {
      if (error instanceof ConnectError) return error;
      throw error;
    }
  }

  private async read(timeoutMs: number): Promise<IteratorResult<T> | "timeout"> {
    if (!this.pending) {
      this.pending = this.iterator.next();
      // Handled here so a stream that fails after the test stopped reading is no unhandled rejection.
      this.pending.catch(() => undefined);
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
    try {
      const result = await Promise.race([this.pending, timeout]);
      if (result !== "timeout") this.pending = undefined;
      return result;
    } catch (error) {
      this.pending = undefined;
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
}

interface Setup {
  agent: FakeAgent;
  socketPath: string;
  client: () => Client<typeof DelegatedIdentity>;
  subscribeSvids(selectors?: { type: string; value: string }[]): StreamReader<SubscribeToX509SVIDsResponse>;
}

/** A fake agent on a socket in a short temp dir; everything is torn down after the test, pass or fail. */
async function setup(t: TestContext, options: Partial<FakeAgentOptions> = {}): Promise<Setup> {
  const dir = await mkdtemp("/tmp/fa-");
  const socketPath = join(dir, "admin.sock");
  const calls = new AbortController();
  let agent: FakeAgent | undefined;
  t.after(async () => {
    calls.abort();
    await agent?.stop();
    await rm(dir, { recursive: true, force: true });
  });
  agent = await startFakeAgent({ socketPath, ...options });
  const client = () =>
    createClient(DelegatedIdentity, createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => connect(socketPath) } }));
  return {
    agent,
    socketPath,
    client,
    subscribeSvids: (selectors = webPodSelectors) =>
      new StreamReader(client().subscribeToX509SVIDs({ selectors }, { signal: calls.signal })[Symbol.asyncIterator]()),
  };
}

describe("fake Delegated Identity agent", () => {
  test("streams a real X.509-SVID: URI SAN = SPIFFE ID, key matches, chain verifies against the bundle's root", async (t) => {
    const { agent, client, subscribeSvids } = await setup(t, { withIntermediate: true });
    await agent.addEntry({ ...web, hint: "internal" });
    const message = await subscribeSvids().next();
    assert.equal(message.x509Svids.length, 1);
    const svid = message.x509Svids[0]!;
    assert.deepEqual({ trustDomain: svid.x509Svid?.id?.trustDomain, path: svid.x509Svid?.id?.path }, { trustDomain: "example.org", path: "/ns/demo/sa/web" });
    assert.equal(svid.x509Svid?.hint, "internal");

    const [leaf, intermediate] = svid.x509Svid!.certChain.map((der) => new X509Certificate(Buffer.from(der)));
    assert.equal(leaf!.subjectAltName, `URI:${web.spiffeId}`);
    assert.ok(leaf!.checkPrivateKey(createPrivateKey({ key: Buffer.from(svid.x509SvidKey), format: "der", type: "pkcs8" })));
    assert.equal(svid.x509Svid!.expiresAt, BigInt(Math.floor(new Date(leaf!.validTo).getTime() / 1000)));

    const bundles = new StreamReader(client().subscribeToX509Bundles({})[Symbol.asyncIterator]());
    const bundle = await bundles.next();
    assert.deepEqual(Object.keys(bundle.caCertificates), ["spiffe://example.org"]);
    const root = new X509Certificate(Buffer.from(bundle.caCertificates["spiffe://example.org"]!));
    assert.ok(leaf!.verify(intermediate!.publicKey));
    assert.ok(intermediate!.verify(root.publicKey));
    assert.ok(root.verify(root.publicKey), "the bundle holds the self-signed root");
  });

  test("no matching entry: an empty set at once, the stream stays open, a later entry is pushed", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    const stream = subscribeSvids();
    assert.deepEqual((await stream.next()).x509Svids, []);
    await agent.waitForStreams(1);
    await stream.expectSilence(200);
    await agent.addEntry(web);
    assert.equal((await stream.next()).x509Svids.length, 1);
    assert.equal(agent.subscribeCalls, 1);
    assert.deepEqual(agent.lastSelectors, webPodSelectors);
  });

  test("an entry matches only when all its selectors are in the request (SPIRE semantics)", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    await agent.addEntry({ id: "ns-wide", spiffeId: "spiffe://example.org/ns/demo", selectors: [{ type: "k8s", value: "ns:demo" }] });
    const onlyNamespace = await subscribeSvids([{ type: "k8s", value: "ns:demo" }]).next();
    assert.deepEqual(onlyNamespace.x509Svids.map((svid) => svid.x509Svid?.id?.path), ["/ns/demo"]);
    const fullPod = await subscribeSvids().next();
    assert.deepEqual(fullPod.x509Svids.map((svid) => svid.x509Svid?.id?.path), ["/ns/demo/sa/web", "/ns/demo"]);
    const otherNamespace = await subscribeSvids([{ type: "k8s", value: "ns:other" }, { type: "k8s", value: "sa:web" }]).next();
    assert.deepEqual(otherNamespace.x509Svids, []);
  });

  test("SVIDs are cached per entry; rotate() pushes a new serial, rotate(id) only that entry's; removal pushes the smaller set", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    await agent.addEntry({ id: "ns-wide", spiffeId: "spiffe://example.org/ns/demo", selectors: [{ type: "k8s", value: "ns:demo" }] });
    const serials = (message: SubscribeToX509SVIDsResponse) =>
      message.x509Svids.map((svid) => new X509Certificate(Buffer.from(svid.x509Svid!.certChain[0]!)).serialNumber);
    const first = subscribeSvids();
    const initial = serials(await first.next());
    assert.deepEqual(serials(await subscribeSvids().next()), initial, "a second subscriber gets the same cached SVIDs");

    await agent.rotate();
    const rotated = serials(await first.next());
    assert.notEqual(rotated[0], initial[0]);
    assert.notEqual(rotated[1], initial[1]);

    await agent.rotate("web");
    const rotatedOne = serials(await first.next());
    assert.notEqual(rotatedOne[0], rotated[0]);
    assert.equal(rotatedOne[1], rotated[1]);
    await assert.rejects(agent.rotate("missing"), /no entry missing/);

    agent.removeEntry("web");
    assert.deepEqual(serials(await first.next()), [rotatedOne[1]]);
  });

  test("resendCurrent pushes an identical duplicate; unrelated changes push nothing", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    const stream = subscribeSvids();
    const first = await stream.next();
    await agent.addEntry({ id: "elsewhere", spiffeId: "spiffe://example.org/elsewhere", selectors: [{ type: "k8s", value: "ns:elsewhere" }] });
    await stream.expectSilence(200);
    agent.resendCurrent();
    const duplicate = await stream.next();
    assert.deepEqual(duplicate.x509Svids[0]!.x509Svid!.certChain, first.x509Svids[0]!.x509Svid!.certChain);
  });

  test("federates_with comes from the entries, as sorted trust domain IDs; federateWith adds the bundle", async (t) => {
    const { agent, client, subscribeSvids } = await setup(t);
    const bundles = new StreamReader(client().subscribeToX509Bundles({})[Symbol.asyncIterator]());
    await bundles.next();
    await agent.addEntry({ ...web, federatesWith: ["spiffe://zeta.example", "alpha.example"] });
    assert.deepEqual((await subscribeSvids().next()).federatesWith, ["spiffe://alpha.example", "spiffe://zeta.example"]);
    await agent.federateWith("alpha.example");
    assert.deepEqual(Object.keys((await bundles.next()).caCertificates).sort(), ["spiffe://alpha.example", "spiffe://example.org"]);
  });

  test("bundle stream: sent at once, again with both roots on addRoot, and whatever setBundles says", async (t) => {
    const { agent, client } = await setup(t);
    const bundles = new StreamReader(client().subscribeToX509Bundles({})[Symbol.asyncIterator]());
    const before = (await bundles.next()).caCertificates["spiffe://example.org"]!;
    await agent.addRoot();
    const after = (await bundles.next()).caCertificates["spiffe://example.org"]!;
    assert.ok(after.length > before.length);
    assert.deepEqual(Buffer.from(after.subarray(0, before.length)), Buffer.from(before), "old root first, new root appended");
    agent.setBundles({ "spiffe://other.example": new Uint8Array([1, 2, 3]) });
    assert.deepEqual(Object.keys((await bundles.next()).caCertificates), ["spiffe://other.example"]);
    assert.equal(agent.openBundleStreams, 1);
  });

  test("dropStreams ends every open stream with UNAVAILABLE; the agent keeps serving", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    const a = subscribeSvids();
    const b = subscribeSvids();
    await a.next();
    await b.next();
    await agent.waitForStreams(2);
    agent.dropStreams();
    assert.equal((await a.error()).code, Code.Unavailable);
    assert.equal((await b.error()).code, Code.Unavailable);
    await agent.waitForStreams(0);
    assert.equal((await subscribeSvids().next()).x509Svids.length, 1);
    assert.equal(agent.subscribeCalls, 3);
  });

  test("deny: new calls fail with PermissionDenied and SPIRE's text; open streams fail at their next update", async (t) => {
    const { agent, client, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    const open = subscribeSvids();
    await open.next();
    agent.deny(true);
    const refused = await subscribeSvids().error();
    assert.equal(refused.code, Code.PermissionDenied);
    assert.equal(refused.rawMessage, notAuthorizedMessage);
    await assert.rejects(client().fetchJWTSVIDs({ audience: ["vault"], selectors: webPodSelectors }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.PermissionDenied);
      return true;
    });
    await open.expectSilence(100);
    await agent.rotate();
    assert.equal((await open.error()).code, Code.PermissionDenied);
    agent.deny(false);
    assert.equal((await subscribeSvids().next()).x509Svids.length, 1);
  });

  test("stop() breaks the streams and removes the socket; start() serves again on the same path", async (t) => {
    const { agent, socketPath, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    const stream = subscribeSvids();
    const before = await stream.next();
    await agent.stop();
    assert.equal((await stream.error()).code, Code.Unavailable);
    assert.equal(existsSync(socketPath), false, "socket file removed");
    assert.equal(agent.openX509Streams, 0);
    await agent.start();
    assert.equal(existsSync(socketPath), true);
    const after = await subscribeSvids().next();
    assert.deepEqual(after.x509Svids[0]!.x509Svid!.certChain, before.x509Svids[0]!.x509Svid!.certChain, "the entries and their SVIDs survive a restart");
  });

  test("holdNewSvids: new subscribers get nothing until released; streams opened earlier keep updating", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    await agent.addEntry(web);
    const early = subscribeSvids();
    await early.next();
    agent.holdNewSvids(true);
    const late = subscribeSvids();
    await agent.waitForStreams(2);
    await late.expectSilence(300);
    await agent.rotate();
    await early.next();
    await late.expectSilence(100);
    agent.holdNewSvids(false);
    assert.equal((await late.next()).x509Svids.length, 1);
  });

  test("pushRaw reaches every open SVID stream as given", async (t) => {
    const { agent, subscribeSvids } = await setup(t);
    const stream = subscribeSvids();
    await stream.next();
    agent.pushRaw({ x509Svids: [{ x509Svid: { certChain: [new Uint8Array([0x30, 0x00])], expiresAt: 1n }, x509SvidKey: new Uint8Array([1]) }] });
    const raw = await stream.next();
    assert.deepEqual(raw.x509Svids[0]!.x509Svid!.certChain, [new Uint8Array([0x30, 0x00])]);
  });

  test("FetchJWTSVIDs: one token per matching entry for the audiences; none matching is PermissionDenied; JWT bundles by trust domain", async (t) => {
    const { agent, client } = await setup(t, { jwtTtlSeconds: 90 });
    await agent.addEntry(web);
    const { svids } = await client().fetchJWTSVIDs({ audience: ["vault"], selectors: webPodSelectors });
    assert.equal(svids.length, 1);
    const payload = JSON.parse(Buffer.from(svids[0]!.token.split(".")[1]!, "base64url").toString()) as { sub: string; aud: string[] };
    assert.equal(payload.sub, web.spiffeId);
    assert.deepEqual(payload.aud, ["vault"]);
    assert.equal(svids[0]!.expiresAt - svids[0]!.issuedAt, 90n);
    await assert.rejects(client().fetchJWTSVIDs({ audience: ["vault"], selectors: [{ type: "k8s", value: "ns:nobody" }] }), /no identity issued/);
    await assert.rejects(client().fetchJWTSVIDs({ audience: [], selectors: webPodSelectors }), /audience must be specified/);

    const jwtBundles = new StreamReader(client().subscribeToJWTBundles({})[Symbol.asyncIterator]());
    const jwks = JSON.parse(Buffer.from((await jwtBundles.next()).bundles["spiffe://example.org"]!).toString()) as { keys: { kid: string }[] };
    const header = JSON.parse(Buffer.from(svids[0]!.token.split(".")[0]!, "base64url").toString()) as { kid: string };
    assert.ok(jwks.keys.some((key) => key.kid === header.kid));
  });

  test("rotateAtHalfLife re-issues each SVID at half its TTL, as SPIRE does", async (t) => {
    const { agent, subscribeSvids } = await setup(t, { svidTtlSeconds: 2, rotateAtHalfLife: true });
    await agent.addEntry(web);
    const stream = subscribeSvids();
    const first = await stream.next();
    const second = await stream.next(3_000);
    assert.notDeepEqual(second.x509Svids[0]!.x509Svid!.certChain, first.x509Svids[0]!.x509Svid!.certChain);
  });
});
