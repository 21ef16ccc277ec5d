import { EventEmitter } from "node:events";
import { rm } from "node:fs/promises";
import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";
import { setTimeout as sleep } from "node:timers/promises";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  DelegatedIdentity,
  SubscribeToX509SVIDsResponseSchema,
  type SubscribeToX509SVIDsResponse,
} from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { createTestCa, type IssuedX509Svid, type TestCa } from "./test-ca.js";

export interface Selector {
  type: string;
  value: string;
}

export interface FakeEntry {
  id: string;
  spiffeId: string;
  selectors: Selector[];
  hint?: string;
  federatesWith?: string[];
}

/** The text SPIRE's agent returns when the caller is not an authorized delegate. */
export const notAuthorizedMessage = "caller not configured as an authorized delegate";

/** A per-stream queue: pushes from the test side, pulled by the streaming handler. */
class StreamQueue<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private failure: ConnectError | undefined;
  private ended = false;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  fail(error: ConnectError): void {
    this.failure = error;
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *drain(signal: AbortSignal): AsyncGenerator<T> {
    const onAbort = () => this.end();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (this.failure) throw this.failure;
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (this.ended) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}

interface SvidStream {
  selectors: Selector[];
  queue: StreamQueue<SubscribeToX509SVIDsResponse>;
  lastSent: string | undefined;
}

/**
 * A Delegated Identity agent for tests and the demo, serving the real proto on a unix socket and
 * behaving like SPIRE: an entry matches when all its selectors are in the request; the full set
 * is sent at once (empty when nothing matches) and again on every change. Controls inject faults.
 */
export class FakeAgent extends EventEmitter {
  readonly entries = new Map<string, FakeEntry>();
  subscribeCalls = 0;
  jwtFetches = 0;
  lastSelectors: Selector[] | undefined;
  private readonly svids = new Map<string, IssuedX509Svid>();
  private readonly svidStreams = new Set<SvidStream>();
  private readonly bundleStreams = new Set<StreamQueue<{ caCertificates: Record<string, Uint8Array> }>>();
  private readonly federated = new Map<string, TestCa>();
  private server: Http2Server | undefined;
  private readonly sessions = new Set<ServerHttp2Session>();
  private denied = false;
  private holding = false;

  constructor(
    readonly socketPath: string,
    readonly ca: TestCa,
    private readonly svidTtlSeconds: number,
    private readonly jwtTtlSeconds = 300,
  ) {
    super();
  }

  get openX509Streams(): number {
    return this.svidStreams.size;
  }

  get openBundleStreams(): number {
    return this.bundleStreams.size;
  }

  async start(): Promise<void> {
    await rm(this.socketPath, { force: true });
    const handler = connectNodeAdapter({ routes: (router) => this.routes(router), grpc: true, connect: false, grpcWeb: false });
    const server = createServer(handler);
    server.on("session", (session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.socketPath, () => resolve());
    });
    this.server = server;
  }

  /** Like an agent process going away: every stream breaks, the socket file disappears. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const stream of this.svidStreams) stream.queue.fail(new ConnectError("agent shutting down", Code.Unavailable));
    for (const queue of this.bundleStreams) queue.fail(new ConnectError("agent shutting down", Code.Unavailable));
    for (const session of this.sessions) session.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.socketPath, { force: true });
  }

  async addEntry(entry: FakeEntry): Promise<void> {
    this.entries.set(entry.id, entry);
    await this.issue(entry);
    this.pushAll();
  }

  removeEntry(id: string): void {
    this.entries.delete(id);
    this.svids.delete(id);
    this.pushAll();
  }

  /** Re-issues the SVIDs (all, or one entry's) and pushes the new sets to every open stream. */
  async rotate(entryId?: string): Promise<void> {
    const targets = entryId ? [this.entries.get(entryId)!] : [...this.entries.values()];
    await Promise.all(targets.map((entry) => this.issue(entry)));
    this.pushAll();
  }

  /** Pushes every stream's current set again, unchanged (SPIRE does this on cache updates). */
  resendCurrent(): void {
    this.pushAll(true);
  }

  pushRaw(response: MessageInitShape<typeof SubscribeToX509SVIDsResponseSchema>): void {
    const message = create(SubscribeToX509SVIDsResponseSchema, response);
    for (const stream of this.svidStreams) stream.queue.push(message);
  }

  dropStreams(code: Code = Code.Unavailable): void {
    for (const stream of this.svidStreams) stream.queue.fail(new ConnectError("stream dropped by the test", code));
    for (const queue of this.bundleStreams) queue.fail(new ConnectError("stream dropped by the test", code));
  }

  deny(denied: boolean): void {
    this.denied = denied;
    if (denied) this.dropStreams(Code.PermissionDenied);
  }

  /** While held, new subscribers get nothing (entries "not minted yet"); release sends the sets. */
  holdNewSvids(hold: boolean): void {
    this.holding = hold;
    if (!hold) this.pushAll();
  }

  /** Adds a federated trust domain whose bundle is sent alongside the own one. */
  async federateWith(trustDomain: string): Promise<TestCa> {
    const ca = await createTestCa({ trustDomain });
    this.federated.set(trustDomain, ca);
    this.pushBundles();
    return ca;
  }

  async addRoot(): Promise<void> {
    await this.ca.addRoot();
    this.pushBundles();
  }

  async waitForStreams(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.svidStreams.size !== count) {
      if (Date.now() > deadline) throw new Error(`expected ${count} open X.509-SVID streams, have ${this.svidStreams.size}`);
      await sleep(20);
    }
  }

  async waitForSubscribeCalls(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.subscribeCalls < count) {
      if (Date.now() > deadline) throw new Error(`expected ${count} SubscribeToX509SVIDs calls, have ${this.subscribeCalls}`);
      await sleep(20);
    }
  }

  private routes(router: ConnectRouter): void {
    router.service(DelegatedIdentity, {
      subscribeToX509SVIDs: (request, context) => {
        this.checkAllowed();
        this.subscribeCalls += 1;
        this.lastSelectors = request.selectors.map(({ type, value }) => ({ type, value }));
        const stream: SvidStream = { selectors: this.lastSelectors, queue: new StreamQueue(), lastSent: undefined };
        return this.serve(stream, context);
      },
      subscribeToX509Bundles: (_request, context) => {
        this.checkAllowed();
        const queue = new StreamQueue<{ caCertificates: Record<string, Uint8Array> }>();
        this.bundleStreams.add(queue);
        queue.push({ caCertificates: this.bundles() });
        return this.serveBundles(queue, context);
      },
      fetchJWTSVIDs: (request) => {
        this.checkAllowed();
        const selectors = request.selectors.map(({ type, value }) => ({ type, value }));
        if (request.audience.length === 0) throw new ConnectError("audience must be specified", Code.InvalidArgument);
        const svids = this.matching(selectors).map((entry) => {
          this.jwtFetches += 1;
          const token = this.ca.signJwt({ spiffeId: entry.spiffeId, audience: request.audience, ttlSeconds: this.jwtTtlSeconds });
          const payload = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { exp: number; iat: number };
          return { token, id: spiffeIdMessage(entry.spiffeId), expiresAt: BigInt(payload.exp), issuedAt: BigInt(payload.iat), hint: entry.hint ?? "" };
        });
        return { svids };
      },
      subscribeToJWTBundles: async function* (this: FakeAgent) {
        yield { bundles: { [`spiffe://${this.ca.trustDomain}`]: Buffer.from(this.ca.jwks()) } };
        await new Promise(() => undefined);
      }.bind(this),
    });
  }

  private async *serve(stream: SvidStream, context: HandlerContext): AsyncGenerator<SubscribeToX509SVIDsResponse> {
    this.svidStreams.add(stream);
    this.emit("streams", this.svidStreams.size);
    try {
      if (!this.holding) this.pushTo(stream, true);
      yield* stream.queue.drain(context.signal);
    } finally {
      this.svidStreams.delete(stream);
      this.emit("streams", this.svidStreams.size);
    }
  }

  private async *serveBundles(
    queue: StreamQueue<{ caCertificates: Record<string, Uint8Array> }>,
    context: HandlerContext,
  ): AsyncGenerator<{ caCertificates: Record<string, Uint8Array> }> {
    try {
      yield* queue.drain(context.signal);
    } finally {
      this.bundleStreams.delete(queue);
    }
  }

  private checkAllowed(): void {
    if (this.denied) throw new ConnectError(notAuthorizedMessage, Code.PermissionDenied);
  }

  private async issue(entry: FakeEntry): Promise<void> {
    this.svids.set(entry.id, await this.ca.issueX509Svid({ spiffeId: entry.spiffeId, ttlSeconds: this.svidTtlSeconds }));
  }

  private matching(selectors: Selector[]): FakeEntry[] {
    const offered = new Set(selectors.map((selector) => `${selector.type}:${selector.value}`));
    return [...this.entries.values()].filter((entry) => entry.selectors.every((selector) => offered.has(`${selector.type}:${selector.value}`)));
  }

  private currentSet(stream: SvidStream): SubscribeToX509SVIDsResponse {
    const entries = this.matching(stream.selectors).filter((entry) => this.svids.has(entry.id));
    return create(SubscribeToX509SVIDsResponseSchema, {
      x509Svids: entries.map((entry) => {
        const svid = this.svids.get(entry.id)!;
        return {
          x509Svid: { certChain: svid.certChainDer, id: spiffeIdMessage(entry.spiffeId), expiresAt: BigInt(svid.expiresAt), hint: entry.hint ?? "" },
          x509SvidKey: svid.keyPkcs8Der,
        };
      }),
      federatesWith: [...new Set(entries.flatMap((entry) => entry.federatesWith ?? []))],
    });
  }

  private pushTo(stream: SvidStream, force: boolean): void {
    const message = this.currentSet(stream);
    const key = message.x509Svids.map((svid) => Buffer.from(svid.x509Svid!.certChain[0]!).toString("base64")).join(",");
    if (!force && key === stream.lastSent) return;
    stream.lastSent = key;
    stream.queue.push(message);
  }

  private pushAll(force = false): void {
    if (this.holding) return;
    for (const stream of this.svidStreams) this.pushTo(stream, force);
  }

  private bundles(): Record<string, Uint8Array> {
    const bundles: Record<string, Uint8Array> = { [`spiffe://${this.ca.trustDomain}`]: this.ca.bundleDer() };
    for (const [trustDomain, ca] of this.federated) bundles[`spiffe://${trustDomain}`] = ca.bundleDer();
    return bundles;
  }

  private pushBundles(): void {
    for (const queue of this.bundleStreams) queue.push({ caCertificates: this.bundles() });
  }
}

function spiffeIdMessage(spiffeId: string): { trustDomain: string; path: string } {
  const url = new URL(spiffeId);
  return { trustDomain: url.host, path: url.pathname };
}

export async function startFakeAgent(options: {
  socketPath: string;
  trustDomain?: string;
  svidTtlSeconds?: number;
  jwtTtlSeconds?: number;
  withIntermediate?: boolean;
}): Promise<FakeAgent> {
  const ca = await createTestCa({ trustDomain: options.trustDomain ?? "example.org", withIntermediate: options.withIntermediate ?? false });
  const agent = new FakeAgent(options.socketPath, ca, options.svidTtlSeconds ?? 3600, options.jwtTtlSeconds);
  await agent.start();
  return agent;
}

