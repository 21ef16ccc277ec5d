import { crashTestPause, crashTestPauseEnabled } from "../crash-test-pause.js";
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import type { AgentClient } from "../spire/agent-client.js";
import type { AgentAvailability } from "../spire/agent-availability.js";
import type { AgentCallLimiter } from "../spire/agent-call-limiter.js";
import type { AgentProblem } from "../spire/agent-errors.js";
import type { BackoffOptions } from "../spire/backoff.js";
import type { BundleFeed } from "../spire/bundle-feed.js";
import { JwtRefresher } from "../spire/jwt-refresher.js";
import { ReconnectingStream } from "../spire/reconnecting-stream.js";
import { parseX509SvidSet, type X509Identity } from "../spire/x509-identity.js";
import type { SubscribeToX509SVIDsResponse } from "../gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";
import { writeSnapshot } from "../files/atomic-snapshot.js";
import { loadPkcs12Writers, renderBundleOnlyFiles, renderVolumeFiles, type Pkcs12Writers } from "../files/volume-files.js";
import { chooseSvid } from "./svid-choice.js";
import { formatSelectors, podSelectors, type Selector } from "./selectors.js";
import type { VolumeSpec } from "./volume-spec.js";
import type { SnapshotCause, VolumeObserver } from "./volume-observer.js";
import { heldIdentity, type VolumeState, type WrittenIdentity } from "./volume-state.js";
import type { SnapshotFile } from "../files/snapshot-file.js";
import type { FanoutLog } from "./fanout-log.js";
import { isStillTarget, type PreparedTarget } from "../files/target-mount.js";

export interface VolumeDependencies {
  client: AgentClient;
  bundles: BundleFeed<readonly Uint8Array[]>;
  jwtBundles: BundleFeed<string>;
  availability: AgentAvailability;
  limiter: AgentCallLimiter;
  adminSocketPath: string;
  backoff: BackoffOptions;
  jwtFetchTimeoutMs: number;
  nodeName: string;
  /** The agent's trust domain: the own bundle of bundle-only volumes (which have no SVID to tell). */
  trustDomain: string | undefined;
  logger: Logger;
  /** Rewrites after the first write: info alone, debug plus one summary line in a fan-out. */
  fanoutLog: FanoutLog;
  observer: VolumeObserver;
}

/** What the agent last told this volume, kept to explain a publish that timed out. */
type LastObservation =
  | { kind: "nothing-yet" }
  | { kind: "empty-set" }
  | { kind: "invalid-svids"; reasons: string[] }
  | { kind: "not-the-requested-svid"; offered: string[] }
  | { kind: "no-jwt"; audiences: string[] }
  | { kind: "no-bundle"; trustDomain: string }
  | { kind: "agent-problem"; problem: AgentProblem }
  | { kind: "write-failed"; reason: string }
  | { kind: "target-lost" };

/**
 * One published volume: its SVID stream, and the snapshot writer that turns each new SVID set
 * (or trust bundle) into files. Writes are serialised and coalesced: while one write runs, only
 * the newest pending update is kept.
 */
export class Volume {
  state: VolumeState;
  readonly selectors: Selector[];
  /** Absent for bundle-only volumes, which need no SVID. */
  private readonly stream: ReconnectingStream<SubscribeToX509SVIDsResponse> | undefined;
  private readonly logger: Logger;
  private identity: X509Identity | undefined;
  private allIdentities: X509Identity[] = [];
  private federatesWith: string[] = [];
  private readonly jwtTokens = new Map<string, string>();
  private readonly jwtRefresher: JwtRefresher | undefined;
  private writtenKey: string | undefined;
  private writeLoop: Promise<void> | undefined;
  private writeWanted = false;
  private lastObservation: LastObservation = { kind: "nothing-yet" };
  private readonly firstWrite = deferred();
  /** Armed while the agent issues the pod no SVID: logs once when the one on disk runs out. */
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly onBundles = () => this.scheduleWrite();
  private readonly onJwtBundles = () => {
    if (this.spec.attributes.jwt.length > 0) this.scheduleWrite();
  };

  /**
   * @param initial `adopting` carries what the files left by the previous process hold.
   * @param targetReady settles once the target dir (and its tmpfs) is there; no snapshot is
   * written before. Rejected: the publish fails and the volume is stopped by its owner.
   */
  constructor(
    readonly spec: VolumeSpec,
    initial: { phase: "publishing" } | { phase: "adopting"; identity: WrittenIdentity | undefined },
    private readonly deps: VolumeDependencies,
    private readonly targetReady: Promise<PreparedTarget>,
  ) {
    targetReady.catch(() => undefined);
    this.state = { ...initial, since: Date.now() };
    this.selectors = podSelectors(spec.pod, deps.nodeName);
    this.logger = deps.logger.child({ volumeId: spec.volumeId, pod: `${spec.pod.namespace}/${spec.pod.name}` });
    this.firstWrite.promise.catch(() => undefined);
    this.stream = spec.attributes.bundleOnly ? undefined : new ReconnectingStream({
      open: (signal) => deps.client.subscribeToX509SVIDs({ selectors: this.selectors }, { signal }),
      onMessage: (message) => this.acceptSvids(message),
      onStatus: (status) => {
        if (status.state === "open" && this.state.phase === "degraded" && this.state.cause === "agent" && this.state.identity) {
          // The agent is back and the files on disk are still current until it says otherwise.
          this.state = { phase: "live", identity: this.state.identity };
        }
        if (status.state !== "retrying") return;
        deps.observer.streamRetrying("x509-svids");
        this.lastObservation = { kind: "agent-problem", problem: status.problem };
        if (this.state.phase === "live") {
          this.state = { phase: "degraded", cause: "agent", problem: status.problem.detail, identity: this.state.identity };
        }
        const level = status.problem.kind === "not-authorized" ? "error" : "warn";
        this.logger[level]({ problem: status.problem.kind, retryInMs: status.delayMs }, status.problem.detail);
      },
      backoff: deps.backoff,
      availability: deps.availability,
      limiter: deps.limiter,
      adminSocketPath: deps.adminSocketPath,
      logger: this.logger,
    });
    if (spec.attributes.jwt.length > 0) {
      this.jwtRefresher = new JwtRefresher({
        client: deps.client,
        selectors: this.selectors,
        audiences: spec.attributes.jwt.map((entry) => entry.audience),
        choose: (svids) => chooseSvid(svids, spec.attributes.select),
        availability: deps.availability,
        limiter: deps.limiter,
        adminSocketPath: deps.adminSocketPath,
        backoff: deps.backoff,
        fetchTimeoutMs: deps.jwtFetchTimeoutMs,
        logger: this.logger,
        onToken: (audience, token) => {
          deps.observer.jwtFetchFinished("ok");
          if (this.jwtTokens.get(audience) === token) return;
          this.jwtTokens.set(audience, token);
          this.scheduleWrite();
        },
        onRetry: () => {
          deps.observer.jwtFetchFinished("error");
          deps.observer.streamRetrying("jwt-svids");
        },
      });
    }
  }

  start(): void {
    this.deps.bundles.on("change", this.onBundles);
    this.deps.jwtBundles.on("change", this.onJwtBundles);
    this.stream?.start();
    if (this.spec.attributes.bundleOnly) this.scheduleWrite();
  }

  async stop(): Promise<void> {
    clearTimeout(this.expiryTimer);
    this.deps.bundles.off("change", this.onBundles);
    this.deps.jwtBundles.off("change", this.onJwtBundles);
    await Promise.all([this.stream?.stop(), this.jwtRefresher?.stop()]);
    this.writeWanted = false;
    await this.writeLoop;
    this.state = { phase: "stopped" };
    this.firstWrite.reject(new Error("volume stopped"));
  }

  /**
   * Resolves once the first snapshot is on disk; rejects with a TimeoutError DOMException when
   * `timeoutMs` passes first. The timer is cleared either way (AbortSignal.timeout's cannot be),
   * so hundreds of publishes leave no timers behind to wake the idle driver.
   */
  async waitForFirstWrite(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DOMException(`no snapshot within ${timeoutMs} ms`, "TimeoutError")), Math.max(0, timeoutMs));
    });
    try {
      await Promise.race([this.firstWrite.promise, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Why no snapshot has been written yet, in words for the operator. */
  explainMissingIdentity(): { detail: string; cause: "no-entry" | "unreachable" | "not-authorized" | "other" } {
    const selectors = formatSelectors(this.selectors);
    const observation = this.lastObservation;
    switch (observation.kind) {
      case "nothing-yet":
        return {
          detail: `the SPIRE agent sent no SVID yet for selectors [${selectors}] (a matching entry may not be minted yet)`,
          cause: "other",
        };
      case "empty-set":
        return {
          detail:
            `the SPIRE agent has no registration entry matching selectors [${selectors}]; ` +
            `register one, e.g. spire-server entry create -parentID <agent> -spiffeID <id> ` +
            `-selector k8s:ns:${this.spec.pod.namespace} -selector k8s:sa:${this.spec.pod.serviceAccount}`,
          cause: "no-entry",
        };
      case "not-the-requested-svid":
        return {
          detail: `the SPIRE agent sent SVIDs [${observation.offered.join(" ")}] but none matches the volume's csi.spire.io/spiffe-id or svid-hint`,
          cause: "other",
        };
      case "no-jwt":
        return { detail: `no JWT-SVID yet for audiences ${observation.audiences.join(", ")}`, cause: "other" };
      case "invalid-svids":
        return { detail: `the SPIRE agent sent SVIDs that failed validation: ${observation.reasons.join("; ")}`, cause: "other" };
      case "no-bundle":
        return { detail: `the SPIRE agent sent no trust bundle for ${observation.trustDomain}`, cause: "other" };
      case "agent-problem":
        return {
          detail: observation.problem.detail,
          cause: observation.problem.kind === "stream-failed" ? "other" : observation.problem.kind,
        };
      case "write-failed":
        return { detail: `writing the files failed: ${observation.reason}`, cause: "other" };
      case "target-lost":
        return { detail: `${this.spec.targetPath} is no longer the volume's own dir or tmpfs; nothing was written`, cause: "other" };
    }
  }

  private acceptSvids(message: SubscribeToX509SVIDsResponse): void {
    const set = parseX509SvidSet(message);
    for (const rejected of set.rejected) {
      this.logger.error({ spiffeId: rejected.spiffeId, reason: rejected.reason }, "rejected an SVID from the agent");
      this.deps.observer.svidRejected(rejected.reason);
    }
    const chosen = set.identities[chooseSvid(set.identities, this.spec.attributes.select)];
    if (!chosen) {
      this.lastObservation =
        set.identities.length > 0
          ? { kind: "not-the-requested-svid", offered: set.identities.map((identity) => identity.spiffeId) }
          : set.rejected.length > 0
            ? { kind: "invalid-svids", reasons: set.rejected.map((r) => `${r.spiffeId}: ${r.reason}`) }
            : { kind: "empty-set" };
      const held = this.latestIdentity();
      if (held) {
        this.logger.warn(
          { selectors: formatSelectors(this.selectors) },
          "the agent no longer has an SVID for this pod; keeping the last one until it expires",
        );
        this.warnAtExpiry(held);
      }
      return;
    }
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    this.identity = chosen;
    // JWT-SVIDs only once the agent has issued the pod an X.509 SVID: for a pod no entry matches,
    // every fetch would be one more attestation at the agent for nothing (a flood of such pods
    // with many audiences each deadlocked SPIRE v1.15.3's agent).
    this.jwtRefresher?.start();
    this.allIdentities = set.identities;
    if (set.invalidFederations > 0) {
      this.logger.error({ dropped: set.invalidFederations }, "ignoring federates_with entries that are not valid SPIFFE trust domain names");
    }
    this.federatesWith = set.federatesWith;
    this.scheduleWrite();
  }

  /**
   * The metric flips to `expired` by itself (it compares with the clock when scraped); the log
   * needs a moment to be written, so one timer is armed, only while no replacement is coming.
   */
  private warnAtExpiry(identity: WrittenIdentity): void {
    if (this.expiryTimer) return;
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = undefined;
      if (this.state.phase === "stopped" || this.latestIdentity()?.serialNumber !== identity.serialNumber) return;
      this.logger.error(
        { spiffeId: identity.spiffeId, serialNumber: identity.serialNumber, expiresAt: identity.expiresAt, selectors: formatSelectors(this.selectors) },
        "the volume's SVID has expired and the agent issued no replacement; the pod's files hold an expired certificate (register an entry matching the selectors)",
      );
    }, Math.max(0, identity.expiresAt * 1000 - Date.now()));
    this.expiryTimer.unref();
  }

  /**
   * The agent's latest SVID for the pod (written, or about to be); before the agent sent any, what
   * a re-adopted volume's files hold from the previous process.
   */
  private latestIdentity(): WrittenIdentity | undefined {
    return this.identity ?? heldIdentity(this.state);
  }

  private scheduleWrite(): void {
    if ((!this.identity && !this.spec.attributes.bundleOnly) || this.state.phase === "stopped") return;
    this.writeWanted = true;
    this.writeLoop ??= this.drainWrites().finally(() => {
      this.writeLoop = undefined;
    });
  }

  private async drainWrites(): Promise<void> {
    let prepared: PreparedTarget;
    try {
      prepared = await this.targetReady;
    } catch {
      return;
    }
    const pkcs12 = this.spec.attributes.keystore ? await loadPkcs12Writers() : undefined;
    while (this.writeWanted) {
      this.writeWanted = false;
      const files = this.renderFiles(pkcs12);
      if (!files) continue;
      const key = contentFingerprint(files);
      if (key === this.writtenKey) {
        // At debug level so a test can tell a repeated agent message arrived and was skipped.
        this.logger.debug("the agent's message changes no file; nothing rewritten");
        continue;
      }
      if (!isStillTarget(this.spec.targetPath, prepared)) {
        // Someone unmounted the tmpfs or replaced the dir: a write now would put the key on the
        // node's disk (or wherever a planted link points). Only unpublish ends this state.
        this.lastObservation = { kind: "target-lost" };
        this.logger.error(
          { targetPath: this.spec.targetPath },
          "the target is no longer the tmpfs mounted for this volume; not writing the key there (unpublish and publish the volume again)",
        );
        this.deps.observer.snapshotFailed("target-lost");
        this.state = { phase: "degraded", cause: "target-lost", problem: "the volume's tmpfs or dir is gone", identity: heldIdentity(this.state) };
        continue;
      }
      try {
        if (crashTestPauseEnabled("mounted") && this.state.phase === "publishing") await crashTestPause("mounted", this.spec.targetPath);
        await writeSnapshot(this.spec.targetPath, files, { gid: this.spec.fsGroup, secretMode: this.spec.attributes.keyMode });
      } catch (error) {
        const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
        this.lastObservation = { kind: "write-failed", reason };
        this.logger.error({ reason }, "writing the volume snapshot failed; the previous files stay in place");
        this.deps.observer.snapshotFailed(reason);
        this.state = { phase: "degraded", cause: "write", problem: `write failed: ${reason}`, identity: heldIdentity(this.state) };
        continue;
      }
      this.writtenKey = key;
      const identity = this.identity;
      const written = identity && { spiffeId: identity.spiffeId, serialNumber: identity.serialNumber, expiresAt: identity.expiresAt };
      const previousPhase = this.state.phase;
      const previousSerial = this.state.phase === "live" || this.state.phase === "degraded" ? this.state.identity?.serialNumber : undefined;
      const cause: SnapshotCause =
        previousPhase === "publishing" || previousPhase === "adopting" ? "first" : previousSerial === identity?.serialNumber ? "update" : "rotation";
      this.state = { phase: "live", identity: written };
      const fields = identity ? { spiffeId: identity.spiffeId, serialNumber: identity.serialNumber, expiresAt: identity.expiresAt } : { bundleOnly: true };
      if (cause === "first") {
        this.logger.info(fields, previousPhase === "publishing" ? "identity files written" : "identity files rewritten after restart");
      } else {
        this.deps.fanoutLog.rewritten(this.logger, fields, cause === "rotation" ? "identity files rotated" : "identity files updated (trust bundles or JWT-SVIDs)", cause);
      }
      this.deps.observer.snapshotWritten(cause);
      this.firstWrite.resolve();
    }
  }

  /** This moment's files, or undefined (with the reason kept) while something they need is missing. */
  private renderFiles(pkcs12: Pkcs12Writers | undefined): SnapshotFile[] | undefined {
    const bundles = this.deps.bundles.current;
    if (this.spec.attributes.bundleOnly) {
      const trustDomain = this.deps.trustDomain!;
      if (!bundles.get(trustDomain)?.length) {
        this.lastObservation = { kind: "no-bundle", trustDomain };
        return undefined;
      }
      return renderBundleOnlyFiles(this.spec.attributes, trustDomain, bundles, pkcs12);
    }
    const identity = this.identity!;
    if (!bundles.get(identity.trustDomain)?.length) {
      this.lastObservation = { kind: "no-bundle", trustDomain: identity.trustDomain };
      return undefined;
    }
    const missingJwt = this.spec.attributes.jwt.filter((entry) => !this.jwtTokens.has(entry.audience)).map((entry) => entry.audience);
    if (missingJwt.length > 0) {
      this.lastObservation = { kind: "no-jwt", audiences: missingJwt };
      return undefined;
    }
    return renderVolumeFiles(this.spec.attributes, {
      identity,
      allIdentities: this.allIdentities,
      bundles,
      federatesWith: this.federatesWith,
      jwtTokens: this.jwtTokens,
      jwtBundles: this.deps.jwtBundles.current,
      pkcs12,
    });
  }
}

/** Identifies a snapshot's content, so a repeated agent message causes no rewrite. */
function contentFingerprint(files: readonly SnapshotFile[]): string {
  const hash = createHash("sha256");
  for (const file of files) hash.update(file.name).update("\0").update(file.content).update("\0");
  return hash.digest("hex");
}

/** Promise.withResolvers arrived in Node 22; Node 20 is supported. */
function deferred(): { promise: Promise<void>; resolve(): void; reject(reason: unknown): void } {
  let resolve!: () => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
