import { EventEmitter, once } from "node:events";
import type { Logger } from "pino";
import type { AgentClient } from "./agent-client.js";
import type { AgentAvailability } from "./agent-availability.js";
import type { BackoffOptions } from "./backoff.js";
import { splitDerCertificates } from "./der.js";
import { ReconnectingStream, type StreamStatus } from "./reconnecting-stream.js";

/** Trust bundles by trust domain name ("example.org"), each a list of DER CA certificates. */
export type X509Bundles = ReadonlyMap<string, readonly Uint8Array[]>;

interface BundleFeedEvents {
  change: [X509Bundles];
  status: [StreamStatus];
}

/**
 * The one SubscribeToX509Bundles stream of the process. Every volume reads its trust bundles
 * from here, so a bundle rotation is one agent message however many volumes there are.
 */
export class BundleFeed extends EventEmitter<BundleFeedEvents> {
  private bundles: X509Bundles = new Map();
  private received = false;
  private status: StreamStatus = { state: "connecting" };
  private readonly stream: ReconnectingStream<{ caCertificates: { [key: string]: Uint8Array } }>;

  constructor(options: {
    client: AgentClient;
    availability: AgentAvailability;
    adminSocketPath: string;
    backoff: BackoffOptions;
    logger: Logger;
    onRetry?: () => void;
  }) {
    super();
    this.setMaxListeners(0);
    const logger = options.logger.child({ stream: "x509-bundles" });
    this.stream = new ReconnectingStream({
      open: (signal) => options.client.subscribeToX509Bundles({}, { signal }),
      onMessage: (message) => this.accept(message.caCertificates, logger),
      onStatus: (status) => {
        this.status = status;
        if (status.state === "retrying") options.onRetry?.();
        this.emit("status", status);
      },
      backoff: options.backoff,
      availability: options.availability,
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

  get current(): X509Bundles {
    return this.bundles;
  }

  get connected(): boolean {
    return this.status.state === "open";
  }

  get lastStatus(): StreamStatus {
    return this.status;
  }

  /** Resolves with the bundles once at least one message has arrived. */
  async ready(signal: AbortSignal): Promise<X509Bundles> {
    if (!this.received) await once(this, "change", { signal });
    return this.bundles;
  }

  private accept(caCertificates: { [key: string]: Uint8Array }, logger: Logger): void {
    const next = new Map<string, Uint8Array[]>();
    for (const [key, der] of Object.entries(caCertificates)) {
      const trustDomain = key.replace(/^spiffe:\/\//, "");
      try {
        next.set(trustDomain, splitDerCertificates(der));
      } catch (error) {
        logger.error({ trustDomain, reason: (error as Error).message }, "ignoring malformed trust bundle from the agent");
        const previous = this.bundles.get(trustDomain);
        if (previous) next.set(trustDomain, [...previous]);
      }
    }
    if (this.received && sameBundles(this.bundles, next)) return;
    this.bundles = next;
    this.received = true;
    logger.info({ trustDomains: [...next.keys()] }, "trust bundles updated");
    this.emit("change", next);
  }
}

function sameBundles(a: X509Bundles, b: X509Bundles): boolean {
  if (a.size !== b.size) return false;
  for (const [trustDomain, certs] of a) {
    const other = b.get(trustDomain);
    if (!other || other.length !== certs.length) return false;
    if (!certs.every((cert, i) => Buffer.from(cert).equals(other[i]!))) return false;
  }
  return true;
}
