import { EventEmitter } from "node:events";
import { rm } from "node:fs/promises";
import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";
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
  /** Federated trust domains, as "spiffe://td" or "td" (sent as "spiffe://td", like SPIRE). */
  federatesWith?: string[];
}

export interface FakeAgentOptions {
  socketPath: string;
  trustDomain?: string;
  svidTtlSeconds?: number;
  jwtTtlSeconds?: number;
  withIntermediate?: boolean;
  /** Re-issue each SVID at half its lifetime, as SPIRE does (for demos and soak runs). */
  rotateAtHalfLife?: boolean;
}

/** The text SPIRE's agent returns when the caller's entries hold no authorized delegate ID. */
export const notAuthorizedMessage = "caller not configured as an authorized delegate";
/** The text SPIRE's agent returns when the caller has no entry at all, or FetchJWTSVIDs matches none. */
export const noIdentityIssuedMessage = "no identity issued";

type BundleMap = Record<string, Uint8Array>;

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

  /** Ends the stream with an error status; queued but unsent items are discarded, like a broken connection. */
  fail(error: ConnectError): void {
    this.failure = error;
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  /**
   * The signal may already be aborted when the handler gets here: under a publish flood the
   * driver gives up on (aborts) many streams within milliseconds of opening them. An "abort"
   * listener added then never fires, and before this check such a stream waited forever and
   * stayed counted as open (the ~280 "leaked" streams after some floods: the fake agent's fault,
   * never seen with real SPIRE, which ends a handler whose context is already done).
   */
  async *drain(signal: AbortSignal): AsyncGenerator<T> {
    const onAbort = () => this.end();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (this.failure) throw this.failure;
        if (this.ended || signal.aborted) return;
        const item = this.items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
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
  /** What was last sent, so unchanged sets are not re-sent unless a test forces it. */
  lastSentKey: string | undefined;
  /** Opened while `holdNewSvids(true)`: gets nothing until released ("not minted yet"). */
  held: boolean;
}

interface CachedSvid {
  svid: IssuedX509Svid;
  issuedAtMs: number;
}

/**
 * A Delegated Identity agent for tests and the demo, serving the real proto on a unix socket and
 * behaving like SPIRE v1.15: an entry matches when all its selectors are in the request; the
 * full set is sent at once (empty when nothing matches) and again on every change; authorization
 * is checked on each call and again before each update. Fault controls and counters are public.
 *
 * Events: "streams" (open X.509-SVID stream count), "subscribe" (selectors of each call),
 * "x509-push" (emitted synchronously just before new SVID sets are queued to the open streams).
 */
export class FakeAgent extends EventEmitter {
  readonly entries = new Map<string, FakeEntry>();
  /** Every SubscribeToX509SVIDs call, refused ones included. */
  subscribeCalls = 0;
  /** JWT-SVIDs minted by FetchJWTSVIDs. */
  jwtFetches = 0;
  /** Every FetchJWTSVIDs call, refused ones included, by the request's k8s:pod-uid selector. */
  readonly jwtFetchCallsByPod = new Map<string, number>();
  /** The most FetchJWTSVIDs calls in flight at once, overall and for any one pod. */
  jwtFetchPeak = 0;
  jwtFetchPeakPerPod = 0;
  /** Each FetchJWTSVIDs answer waits this long, as a loaded agent's would. */
  jwtFetchDelayMs = 0;
  /**
   * While set, every FetchJWTSVIDs call (after the delay) fails with this status, or with "hang"
   * is never answered: it waits until the caller cancels or its deadline passes.
   */
  jwtFetchFault: { code: Code; message: string } | "hang" | undefined;
  /** FetchJWTSVIDs calls that ended because the caller cancelled or its deadline passed. */
  jwtFetchesAbandoned = 0;
  private jwtFetchesInFlight = 0;
  private readonly jwtFetchesInFlightByPod = new Map<string, number>();
  lastSelectors: Selector[] | undefined;
  private readonly svids = new Map<string, CachedSvid>();
  private readonly svidStreams = new Set<SvidStream>();
  private readonly bundleStreams = new Set<StreamQueue<{ caCertificates: BundleMap }>>();
  private readonly jwtBundleStreams = new Set<StreamQueue<{ bundles: BundleMap }>>();
  private readonly federated = new Map<string, TestCa>();
  private bundleOverride: BundleMap | undefined;
  private server: Http2Server | undefined;
  private readonly sessions = new Set<ServerHttp2Session>();
  private denied = false;
  private holding = false;
  private rotationTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly socketPath: string,
    readonly ca: TestCa,
    private readonly svidTtlSeconds: number,
    private readonly jwtTtlSeconds = 300,
    private readonly rotateAtHalfLife = false,
  ) {
    super();
    this.setMaxListeners(0);
  }

  get openX509Streams(): number {
    return this.svidStreams.size;
  }

  get openBundleStreams(): number {
    return this.bundleStreams.size;
  }

  /** FetchJWTSVIDs calls being handled now (hanging ones included). */
  get jwtFetchesInFlightNow(): number {
    return this.jwtFetchesInFlight;
  }

  get openJwtBundleStreams(): number {
    return this.jwtBundleStreams.size;
  }

  get listening(): boolean {
    return this.server !== undefined;
  }

  /** Binds the socket (removing a stale file first); call again after `stop()` to model an agent restart. */
  async start(): Promise<void> {
    if (this.server) throw new Error(`fake agent already listening on ${this.socketPath}`);
    await rm(this.socketPath, { force: true });
    const handler = connectNodeAdapter({ routes: (router) => this.routes(router), grpc: true, connect: false, grpcWeb: false });
    const server = createServer(handler);
    server.on("session", (session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.socketPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.server = server;
    if (this.rotateAtHalfLife) {
      this.rotationTimer = setInterval(() => void this.rotateHalfLived(), 250);
      this.rotationTimer.unref();
    }
  }

  /** Like the agent process going away: every stream breaks, the socket file disappears. */
  async stop(): Promise<void> {
    clearInterval(this.rotationTimer);
    this.rotationTimer = undefined;
    const server = this.server;
    this.server = undefined;
    this.failAllStreams(new ConnectError("agent shutting down", Code.Unavailable));
    // Let the handlers write their UNAVAILABLE status before the connections go; destroying the
    // sessions at once would surface as CANCELED, which no real agent shutdown produces.
    await this.waitForHandlersToEnd(1_000);
    for (const session of this.sessions) session.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.socketPath, { force: true });
  }

  /** Registers an entry (its SVID is minted at once) and pushes to the streams it matches. */
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
    const targets = entryId === undefined ? [...this.entries.values()] : [this.entry(entryId)];
    await Promise.all(targets.map((entry) => this.issue(entry)));
    this.pushAll();
  }

  /** The SVID currently cached for an entry (what subscribers receive). */
  currentSvid(entryId: string): IssuedX509Svid | undefined {
    return this.svids.get(entryId)?.svid;
  }

  /** Pushes every stream's current set again, unchanged (SPIRE does this on cache updates). */
  resendCurrent(): void {
    this.pushAll(true);
  }

  /** Sends an arbitrary response to every open X.509-SVID stream (malformed-data tests). */
  pushRaw(response: MessageInitShape<typeof SubscribeToX509SVIDsResponseSchema>): void {
    const message = create(SubscribeToX509SVIDsResponseSchema, response);
    for (const stream of this.svidStreams) stream.queue.push(message);
  }

  /** Sends an arbitrary bundle map to every bundle stream once (malformed-data tests). */
  pushRawBundles(caCertificates: BundleMap): void {
    for (const queue of this.bundleStreams) queue.push({ caCertificates });
  }

  /** Sends an arbitrary JWT bundle map ("spiffe://td" -> JWKS bytes) to every JWT bundle stream once. */
  pushRawJwtBundles(bundles: BundleMap): void {
    for (const queue of this.jwtBundleStreams) queue.push({ bundles });
  }

  /** Ends only the JWT bundle streams with this status; the SVID and X.509 bundle streams stay. */
  dropJwtBundleStreams(code: Code = Code.Unavailable): void {
    for (const queue of this.jwtBundleStreams) queue.fail(new ConnectError("JWT bundle stream dropped by the test", code));
  }

  /**
   * Replaces the X.509 bundle map the agent serves ("spiffe://td" -> concatenated DER) and pushes
   * it; `undefined` goes back to the CA's roots plus the federated CAs.
   */
  setBundles(caCertificates: BundleMap | undefined): void {
    this.bundleOverride = caCertificates;
    this.pushBundles();
  }

  /** Ends every open stream (SVID and bundle) with this status, as a flaky agent would. */
  dropStreams(code: Code = Code.Unavailable): void {
    this.failAllStreams(new ConnectError("stream dropped by the test", code));
  }

  /**
   * Makes the driver an unauthorized delegate: new calls fail with PermissionDenied at once; open
   * streams fail at their next update (SPIRE re-checks authorization before each send).
   */
  deny(denied: boolean): void {
    this.denied = denied;
  }

  /** While held, new subscribers get nothing (entries "not minted yet"); release sends them their sets. */
  holdNewSvids(hold: boolean): void {
    this.holding = hold;
    if (hold) return;
    for (const stream of this.svidStreams) {
      if (!stream.held) continue;
      stream.held = false;
      this.pushTo(stream, true);
    }
  }

  /** Adds a federated trust domain whose X.509 and JWT bundles are sent alongside the own ones. */
  async federateWith(trustDomain: string): Promise<TestCa> {
    const ca = await createTestCa({ trustDomain });
    this.federated.set(trustDomain, ca);
    this.pushBundles();
    this.pushJwtBundles();
    return ca;
  }

  /** Adds a root to the CA (bundle rotation): bundle streams get both roots, new SVIDs chain to the new one. */
  async addRoot(): Promise<void> {
    await this.ca.addRoot();
    this.pushBundles();
  }

  /** Resolves when exactly `count` X.509-SVID streams are open. */
  waitForStreams(count: number, timeoutMs = 10_000): Promise<void> {
    return this.waitFor("streams", () => this.svidStreams.size === count, timeoutMs, () => `expected ${count} open X.509-SVID streams, have ${this.svidStreams.size}`);
  }

  /** Resolves once SubscribeToX509SVIDs was called at least `count` times in total. */
  waitForSubscribeCalls(count: number, timeoutMs = 10_000): Promise<void> {
    return this.waitFor("subscribe", () => this.subscribeCalls >= count, timeoutMs, () => `expected ${count} SubscribeToX509SVIDs calls, have ${this.subscribeCalls}`);
  }

  private async waitForHandlersToEnd(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.svidStreams.size + this.bundleStreams.size + this.jwtBundleStreams.size > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    // The status trailers are written right after the handler ends.
    await new Promise((resolve) => setImmediate(resolve));
  }

  private waitFor(event: string, done: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!done()) return;
        clearTimeout(timer);
        this.off(event, check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.off(event, check);
        reject(new Error(describe()));
      }, timeoutMs);
      this.on(event, check);
    });
  }

  private routes(router: ConnectRouter): void {
    router.service(DelegatedIdentity, {
      subscribeToX509SVIDs: (request, context) => {
        this.subscribeCalls += 1;
        this.lastSelectors = request.selectors.map(({ type, value }) => ({ type, value }));
        this.emit("subscribe", this.lastSelectors);
        const stream: SvidStream = { selectors: this.lastSelectors, queue: new StreamQueue(), lastSentKey: undefined, held: this.holding };
        return this.serveSvids(stream, context);
      },
      subscribeToX509Bundles: (_request, context) => {
        const queue = new StreamQueue<{ caCertificates: BundleMap }>();
        queue.push({ caCertificates: this.bundles() });
        return this.serveQueue(this.bundleStreams, queue, context);
      },
      fetchJWTSVIDs: async (request, context) => {
        // SPIRE checks the audience before authorization.
        if (request.audience.length === 0) throw new ConnectError("audience must be specified", Code.InvalidArgument);
        const pod = request.selectors.find((selector) => selector.value.startsWith("pod-uid:"))?.value ?? "";
        this.jwtFetchCallsByPod.set(pod, (this.jwtFetchCallsByPod.get(pod) ?? 0) + 1);
        this.jwtFetchesInFlight += 1;
        const podInFlight = (this.jwtFetchesInFlightByPod.get(pod) ?? 0) + 1;
        this.jwtFetchesInFlightByPod.set(pod, podInFlight);
        this.jwtFetchPeak = Math.max(this.jwtFetchPeak, this.jwtFetchesInFlight);
        this.jwtFetchPeakPerPod = Math.max(this.jwtFetchPeakPerPod, podInFlight);
        try {
          if (this.jwtFetchDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.jwtFetchDelayMs));
          if (this.jwtFetchFault === "hang") {
            await new Promise<void>((resolve) => {
              if (context.signal.aborted) resolve();
              context.signal.addEventListener("abort", () => resolve(), { once: true });
            });
            this.jwtFetchesAbandoned += 1;
            // DeadlineExceeded when the request's grpc-timeout ran out (as grpc-go answers), Canceled when the caller cancelled.
            throw ConnectError.from(context.signal.reason);
          }
          if (this.jwtFetchFault) throw new ConnectError(this.jwtFetchFault.message, this.jwtFetchFault.code);
        } finally {
          this.jwtFetchesInFlight -= 1;
          this.jwtFetchesInFlightByPod.set(pod, this.jwtFetchesInFlightByPod.get(pod)! - 1);
        }
        this.checkAllowed();
        const selectors = request.selectors.map(({ type, value }) => ({ type, value }));
        // One token per matching entry, carrying every requested audience (as SPIRE does).
        const svids = this.matching(selectors).map((entry) => {
          this.jwtFetches += 1;
          const token = this.ca.signJwt({ spiffeId: entry.spiffeId, audience: request.audience, ttlSeconds: this.jwtTtlSeconds });
          const payload = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { exp: number; iat: number };
          return { token, id: spiffeIdMessage(entry.spiffeId), expiresAt: BigInt(payload.exp), issuedAt: BigInt(payload.iat), hint: entry.hint ?? "" };
        });
        if (svids.length === 0) throw new ConnectError(noIdentityIssuedMessage, Code.PermissionDenied);
        return { svids };
      },
      subscribeToJWTBundles: (_request, context) => {
        const queue = new StreamQueue<{ bundles: BundleMap }>();
        queue.push({ bundles: this.jwtBundles() });
        return this.serveQueue(this.jwtBundleStreams, queue, context);
      },
    });
  }

  private async *serveSvids(stream: SvidStream, context: HandlerContext): AsyncGenerator<SubscribeToX509SVIDsResponse> {
    this.checkAllowed();
    this.svidStreams.add(stream);
    this.emit("streams", this.svidStreams.size);
    try {
      if (!stream.held) this.pushTo(stream, true);
      yield* stream.queue.drain(context.signal);
    } finally {
      this.svidStreams.delete(stream);
      this.emit("streams", this.svidStreams.size);
    }
  }

  private async *serveQueue<T>(registry: Set<StreamQueue<T>>, queue: StreamQueue<T>, context: HandlerContext): AsyncGenerator<T> {
    this.checkAllowed();
    registry.add(queue);
    try {
      yield* queue.drain(context.signal);
    } finally {
      registry.delete(queue);
    }
  }

  private checkAllowed(): void {
    if (this.denied) throw new ConnectError(notAuthorizedMessage, Code.PermissionDenied);
  }

  private entry(id: string): FakeEntry {
    const entry = this.entries.get(id);
    if (!entry) throw new Error(`fake agent has no entry ${id}`);
    return entry;
  }

  private async issue(entry: FakeEntry): Promise<void> {
    const svid = await this.ca.issueX509Svid({ spiffeId: entry.spiffeId, ttlSeconds: this.svidTtlSeconds });
    // The entry may have been removed while its SVID was being minted.
    if (this.entries.get(entry.id) === entry) this.svids.set(entry.id, { svid, issuedAtMs: Date.now() });
  }

  private async rotateHalfLived(): Promise<void> {
    const due = [...this.entries.values()].filter((entry) => {
      const cached = this.svids.get(entry.id);
      return cached !== undefined && Date.now() - cached.issuedAtMs >= (this.svidTtlSeconds * 1000) / 2;
    });
    if (due.length === 0) return;
    await Promise.all(due.map((entry) => this.issue(entry)));
    this.pushAll();
  }

  private matching(selectors: Selector[]): FakeEntry[] {
    const offered = new Set(selectors.map((selector) => `${selector.type}:${selector.value}`));
    return [...this.entries.values()].filter((entry) => entry.selectors.every((selector) => offered.has(`${selector.type}:${selector.value}`)));
  }

  private currentSet(stream: SvidStream): SubscribeToX509SVIDsResponse {
    const minted = this.matching(stream.selectors).flatMap((entry) => {
      const cached = this.svids.get(entry.id);
      return cached ? [{ entry, svid: cached.svid }] : [];
    });
    const federatesWith = new Set(minted.flatMap(({ entry }) => (entry.federatesWith ?? []).map(trustDomainId)));
    return create(SubscribeToX509SVIDsResponseSchema, {
      x509Svids: minted.map(({ entry, svid }) => ({
        x509Svid: { certChain: svid.certChainDer, id: spiffeIdMessage(entry.spiffeId), expiresAt: BigInt(svid.expiresAt), hint: entry.hint ?? "" },
        x509SvidKey: svid.keyPkcs8Der,
      })),
      // SPIRE sorts these for a stable response.
      federatesWith: [...federatesWith].sort(),
    });
  }

  private pushTo(stream: SvidStream, force: boolean): void {
    if (this.denied) {
      stream.queue.fail(new ConnectError(notAuthorizedMessage, Code.PermissionDenied));
      return;
    }
    const message = this.currentSet(stream);
    const key = JSON.stringify([
      message.x509Svids.map((svid) => [Buffer.from(svid.x509Svid?.certChain[0] ?? []).toString("base64"), svid.x509Svid?.hint]),
      message.federatesWith,
    ]);
    if (!force && key === stream.lastSentKey) return;
    stream.lastSentKey = key;
    stream.queue.push(message);
  }

  private pushAll(force = false): void {
    this.emit("x509-push");
    for (const stream of this.svidStreams) {
      if (!stream.held) this.pushTo(stream, force);
    }
  }

  private failAllStreams(error: ConnectError): void {
    for (const stream of this.svidStreams) stream.queue.fail(error);
    for (const queue of this.bundleStreams) queue.fail(error);
    for (const queue of this.jwtBundleStreams) queue.fail(error);
  }

  private bundles(): BundleMap {
    if (this.bundleOverride) return { ...this.bundleOverride };
    const bundles: BundleMap = { [trustDomainId(this.ca.trustDomain)]: this.ca.bundleDer() };
    for (const [trustDomain, ca] of this.federated) bundles[trustDomainId(trustDomain)] = ca.bundleDer();
    return bundles;
  }

  private jwtBundles(): BundleMap {
    const bundles: BundleMap = { [trustDomainId(this.ca.trustDomain)]: Buffer.from(this.ca.jwks()) };
    for (const [trustDomain, ca] of this.federated) bundles[trustDomainId(trustDomain)] = Buffer.from(ca.jwks());
    return bundles;
  }

  private pushBundles(): void {
    for (const queue of this.bundleStreams) {
      if (this.denied) queue.fail(new ConnectError(notAuthorizedMessage, Code.PermissionDenied));
      else queue.push({ caCertificates: this.bundles() });
    }
  }

  private pushJwtBundles(): void {
    for (const queue of this.jwtBundleStreams) {
      if (this.denied) queue.fail(new ConnectError(notAuthorizedMessage, Code.PermissionDenied));
      else queue.push({ bundles: this.jwtBundles() });
    }
  }
}

function spiffeIdMessage(spiffeId: string): { trustDomain: string; path: string } {
  const url = new URL(spiffeId);
  return { trustDomain: url.host, path: url.pathname };
}

/** "td" or "spiffe://td" -> "spiffe://td", the key form SPIRE uses for bundles and federates_with. */
function trustDomainId(trustDomain: string): string {
  return trustDomain.startsWith("spiffe://") ? trustDomain : `spiffe://${trustDomain}`;
}

/** A fresh CA plus a listening fake agent: one call for tests and `npm run demo`. */
export async function startFakeAgent(options: FakeAgentOptions): Promise<FakeAgent> {
  const ca = await createTestCa({ trustDomain: options.trustDomain ?? "example.org", withIntermediate: options.withIntermediate ?? false });
  const agent = new FakeAgent(options.socketPath, ca, options.svidTtlSeconds ?? 3600, options.jwtTtlSeconds, options.rotateAtHalfLife ?? false);
  await agent.start();
  return agent;
}
