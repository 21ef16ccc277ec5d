import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import type { AgentClient } from "./agent-client.js";
import type { AgentAvailability } from "./agent-availability.js";
import type { AgentCallLimiter } from "./agent-call-limiter.js";
import type { BackoffOptions } from "./backoff.js";
import { trustDomainOfKey } from "../config/trust-domain.js";
import { splitDerCertificates } from "./der.js";
import { ReconnectingStream, type StreamStatus } from "./reconnecting-stream.js";

/** Bundles by trust domain name ("example.org"). */
export type Bundles<T> = ReadonlyMap<string, T>;
/** X.509 bundles: DER CA certificates per trust domain. */
export type X509Bundles = Bundles<readonly Uint8Array[]>;
/** JWT bundles: JWKS JSON per trust domain. */
export type JwtBundles = Bundles<string>;

interface BundleFeedEvents<T> {
  change: [Bundles<T>];
  status: [StreamStatus];
}

export interface BundleFeedOptions {
  client: AgentClient;
  availability: AgentAvailability;
  limiter: AgentCallLimiter;
  adminSocketPath: string;
  backoff: BackoffOptions;
  logger: Logger;
  onRetry?: () => void;
  /** A bundle the agent sent was not used (malformed, or keyed by an invalid trust domain name). */
  onRejected?: () => void;
}

/**
 * One agent bundle stream for the whole process (X.509 or JWT). Every volume reads its trust
 * bundles from here, so a bundle rotation is one agent message however many volumes there are.
 * A malformed bundle for one trust domain keeps that domain's previous value.
 */
export class BundleFeed<T> extends EventEmitter<BundleFeedEvents<T>> {
  private bundles: Bundles<T> = new Map();
  private received = false;
  private status: StreamStatus = { state: "connecting" };
  private readonly stream: ReconnectingStream<{ [trustDomain: string]: Uint8Array }>;
  private readonly onRejected: (() => void) | undefined;

  constructor(
    name: "x509-bundles" | "jwt-bundles",
    open: (signal: AbortSignal) => AsyncIterable<{ [trustDomain: string]: Uint8Array }>,
    private readonly decode: (bytes: Uint8Array) => T,
    private readonly same: (a: T, b: T) => boolean,
    options: BundleFeedOptions,
  ) {
    super();
    this.setMaxListeners(0);
    this.onRejected = options.onRejected;
    const logger = options.logger.child({ stream: name });
    this.stream = new ReconnectingStream({
      open,
      onMessage: (message) => this.accept(message, logger),
      onStatus: (status) => {
        this.status = status;
        if (status.state === "retrying") options.onRetry?.();
        this.emit("status", status);
      },
      backoff: options.backoff,
      availability: options.availability,
      limiter: options.limiter,
      adminSocketPath: options.adminSocketPath,
      logger,
    });
  }

  start(): void {
    this.stream.start();
  }

  stop(): Promise<void> {
    return this.stream.stop();
  }

  get current(): Bundles<T> {
    return this.bundles;
  }

  get connected(): boolean {
    return this.status.state === "open";
  }

  private accept(message: { [key: string]: Uint8Array }, logger: Logger): void {
    const next = new Map<string, T>();
    for (const [key, bytes] of Object.entries(message)) {
      const trustDomain = trustDomainOfKey(key);
      if (trustDomain === undefined) {
        // Its name would become a file name in every volume (`<td>.trust-bundle.pem`).
        logger.error({ trustDomain: key.slice(0, 300) }, "ignoring a bundle whose key is not a valid SPIFFE trust domain name");
        this.onRejected?.();
        continue;
      }
      try {
        next.set(trustDomain, this.decode(bytes));
      } catch (error) {
        logger.error({ trustDomain, reason: (error as Error).message }, "ignoring a malformed bundle from the agent");
        this.onRejected?.();
        const previous = this.bundles.get(trustDomain);
        if (previous !== undefined) next.set(trustDomain, previous);
      }
    }
    if (this.received && this.sameAll(next)) return;
    this.bundles = next;
    this.received = true;
    logger.info({ trustDomains: [...next.keys()] }, "trust bundles updated");
    this.emit("change", next);
  }

  private sameAll(next: Bundles<T>): boolean {
    if (next.size !== this.bundles.size) return false;
    for (const [trustDomain, value] of next) {
      const previous = this.bundles.get(trustDomain);
      if (previous === undefined || !this.same(previous, value)) return false;
    }
    return true;
  }
}

export function x509BundleFeed(options: BundleFeedOptions): BundleFeed<readonly Uint8Array[]> {
  return new BundleFeed<readonly Uint8Array[]>(
    "x509-bundles",
    (signal) => mapStream(options.client.subscribeToX509Bundles({}, { signal }), (message) => message.caCertificates),
    splitDerCertificates,
    (a, b) => a.length === b.length && a.every((cert, i) => Buffer.from(cert).equals(b[i]!)),
    options,
  );
}

export function jwtBundleFeed(options: BundleFeedOptions): BundleFeed<string> {
  return new BundleFeed(
    "jwt-bundles",
    (signal) => mapStream(options.client.subscribeToJWTBundles({}, { signal }), (message) => message.bundles),
    (bytes) => {
      const text = Buffer.from(bytes).toString("utf8");
      const jwks = JSON.parse(text) as { keys?: unknown };
      if (!Array.isArray(jwks.keys)) throw new Error("JWKS has no keys array");
      return text;
    },
    (a, b) => a === b,
    options,
  );
}

async function* mapStream<I, O>(source: AsyncIterable<I>, map: (item: I) => O): AsyncGenerator<O> {
  for await (const item of source) yield map(item);
}
