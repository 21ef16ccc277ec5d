import { access } from "node:fs/promises";
import type { Logger } from "pino";
import type { MetadataStore, VolumeRecord } from "@spire-csi-driver/metadata-store";
import { crashTestPause, crashTestPauseEnabled } from "../crash-test-pause.js";
import { DriverError } from "../errors.js";
import { hasSnapshot } from "../files/atomic-snapshot.js";
import { readIdentityInFiles } from "../files/identity-in-files.js";
import { placeOfTarget, requireUnderPods, type KubeletPaths } from "../files/kubelet-paths.js";
import { isMountPoint, readMountPoints } from "../files/mount-table.js";
import { checkTarget, prepareTarget, releaseTarget, type PreparedTarget, type VolumeBacking } from "../files/target-mount.js";
import { checkKeyMode, parseVolumeAttributes } from "./volume-attributes.js";
import { KeyedMutex } from "./keyed-mutex.js";
import { specDifference, type VolumeSpec } from "./volume-spec.js";
import { checkRecordedVolume } from "./volume-rules.js";
import { Volume, type VolumeDependencies } from "./volume.js";
import { reportedPhase, type ReportedPhase, type WrittenIdentity } from "./volume-state.js";

export interface VolumeManagerOptions {
  store: MetadataStore;
  backing: VolumeBacking;
  kubelet: KubeletPaths;
  publishTimeoutMs: number;
  volume: VolumeDependencies;
  logger: Logger;
}

type AdoptionOutcome = "adopted" | "removed-stale" | "left-for-next-start" | "quarantined";

export interface AdoptionReport {
  adopted: number;
  removedStale: number;
  quarantined: number;
}

/**
 * The volume lifecycle: publish (record, target and stream side by side → first snapshot),
 * unpublish (stream → files → record), and re-adoption of every recorded volume after a restart.
 * Each volume's operations are serialised; the record is down before any file is written and
 * deleted after everything else is gone, so a crash never leaves files without a record.
 */
export class VolumeManager {
  private readonly volumes = new Map<string, Volume>();
  private readonly mutex = new KeyedMutex();
  /**
   * Recorded volumes this process could not take back (by volume id, or by record file name when
   * the record was unreadable), with the reason. They are counted as `adoption-failed` until
   * kubelet unpublishes or publishes that volume id again, so they do not vanish from the metrics
   * while their files stop rotating.
   */
  private readonly adoptionFailures = new Map<string, string>();
  /**
   * Which volume holds each target: published, being published or re-adopted. Taken before the
   * first await of a publish, so two volume_ids racing for one target cannot both pass the check
   * and mount and write into the same dir (the per-volume mutex does not serialise them).
   */
  private readonly targets = new Map<string, string>();
  /** Aborted when the process shuts down: publishes still waiting for a first SVID give up. */
  private readonly stopping = new AbortController();
  /** Publishes and unpublishes under way, so shutdown lets each finish (or clean up) and answer. */
  private readonly operations = new Set<Promise<void>>();

  constructor(private readonly options: VolumeManagerOptions) {}

  phases(nowSeconds: number): Map<ReportedPhase, number> {
    const counts = new Map<ReportedPhase, number>();
    for (const volume of this.volumes.values()) {
      const phase = reportedPhase(volume.state, nowSeconds);
      if (phase) counts.set(phase, (counts.get(phase) ?? 0) + 1);
    }
    if (this.adoptionFailures.size > 0) counts.set("adoption-failed", this.adoptionFailures.size);
    return counts;
  }

  all(): IterableIterator<Volume> {
    return this.volumes.values();
  }

  /**
   * Not cancellable on purpose: when kubelet gives up on a call it retries the same publish, and
   * that retry finds the finished (or cleaned-up) result instead of a half-built volume.
   */
  async publish(spec: VolumeSpec): Promise<void> {
    this.refuseWhileStopping(spec.volumeId);
    this.reserveTarget(spec.volumeId, spec.targetPath);
    try {
      await this.tracked(this.mutex.run(spec.volumeId, () => this.publishLocked(spec)));
    } finally {
      this.settleReservation(spec.volumeId, spec.targetPath);
    }
  }

  async unpublish(volumeId: string, targetPath: string): Promise<void> {
    try {
      await this.tracked(this.mutex.run(volumeId, () => this.unpublishLocked(volumeId, targetPath)));
    } finally {
      this.settleReservation(volumeId, targetPath);
    }
  }

  private tracked(operation: Promise<void>): Promise<void> {
    const settled = operation.then(
      () => undefined,
      () => undefined,
    );
    this.operations.add(settled);
    void settled.then(() => this.operations.delete(settled));
    return operation;
  }

  private refuseWhileStopping(volumeId: string): void {
    if (this.stopping.signal.aborted) throw shuttingDown(volumeId);
  }

  /** The first write, or a shutting-down error as soon as shutdown begins (then the caller cleans up). */
  private untilShutdown(volume: Volume, timeoutMs: number): Promise<void> {
    const { signal } = this.stopping;
    if (signal.aborted) return Promise.reject(shuttingDown(volume.spec.volumeId));
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(shuttingDown(volume.spec.volumeId));
      signal.addEventListener("abort", onAbort, { once: true });
    });
    return Promise.race([volume.waitForFirstWrite(timeoutMs), aborted]).finally(() => signal.removeEventListener("abort", onAbort!));
  }

  /** Claims the target for the volume, or throws ALREADY_EXISTS naming the volume that holds it. */
  private reserveTarget(volumeId: string, targetPath: string): void {
    const holder = this.targets.get(targetPath);
    if (holder !== undefined && holder !== volumeId) {
      throw new DriverError("already-exists", `target_path ${targetPath} already holds volume ${holder}; unpublish it first`);
    }
    this.targets.set(targetPath, volumeId);
  }

  /** Gives a claim back once no volume of that id is published at the target. */
  private settleReservation(volumeId: string, targetPath: string): void {
    if (this.targets.get(targetPath) === volumeId && this.volumes.get(volumeId)?.spec.targetPath !== targetPath) {
      this.targets.delete(targetPath);
    }
  }

  private async publishLocked(spec: VolumeSpec): Promise<void> {
    // Again under the volume's lock: shutdown may have begun, and an unpublish queued before this
    // call may have released the target.
    this.refuseWhileStopping(spec.volumeId);
    this.reserveTarget(spec.volumeId, spec.targetPath);
    const existing = this.volumes.get(spec.volumeId);
    if (existing) {
      const difference = specDifference(existing.spec, spec);
      if (difference) {
        throw new DriverError(
          "already-exists",
          `volume ${spec.volumeId} is already published with a different ${difference}; unpublish it first`,
        );
      }
      if (existing.state.phase === "adopting") {
        // Re-adopted after a crash that may have come before the first write: only report the
        // volume as published once its files are on disk.
        try {
          await this.untilShutdown(existing, this.options.publishTimeoutMs);
        } catch (error) {
          throw this.publishFailure(existing, error);
        }
      }
      return;
    }

    if (spec.attributes.bundleOnly && this.options.volume.trustDomain === undefined) {
      throw new DriverError(
        "failed-precondition",
        "volume_context[csi.spire.io/bundle-only]: the driver does not know its trust domain; start it with --trust-domain (chart value spire.trustDomain)",
      );
    }
    const { logger } = this.options;
    const { observer } = this.options.volume;
    const started = performance.now();
    await Promise.resolve()
      .then(async () => {
        await checkTarget(spec.targetPath);
        await requireUnderPods(spec.targetPath, this.options.kubelet);
      })
      .catch((error: unknown) => {
        observer.publishFinished(error instanceof DriverError ? error.code : "internal", (performance.now() - started) / 1000);
        throw error;
      });
    // The agent subscription, the record write and the mount (each a few ms) run side by side; no
    // file is written before the record is down and the target is ready. A crash after the mount
    // but before the record leaves an empty tmpfs that kubelet acts on either way: its retried
    // publish finds and reuses the mount, its unpublish removes a mount it finds without a record.
    // Both settle before a failure is reported, so the cleanup never races a mount still in flight.
    // Every step is bounded by the publish deadline, so a hung mount(8) or a disk that stops
    // answering a write gets kubelet a DEADLINE_EXCEEDED in time instead of a call that never
    // returns. The mount runner kills a mount at the deadline; a write cannot be cancelled, so the
    // record write goes on in the background (in order with this volume's later record writes).
    const deadline = performance.now() + this.options.publishTimeoutMs;
    const recordWritten = within(this.options.store.put(toRecord(spec)), this.options.publishTimeoutMs, `writing the record of ${spec.volumeId}`).catch(
      (error: unknown) => {
        throw this.recordWriteFailure(spec.volumeId, error);
      },
    );
    const mountAllowed = crashTestPauseEnabled("record-written") ? recordWritten.then(() => crashTestPause("record-written", spec.targetPath)) : undefined;
    const targetReady = Promise.allSettled([
      recordWritten,
      (mountAllowed ?? Promise.resolve()).then(() => prepareTarget(spec.targetPath, this.options.backing, spec.fsGroup, undefined, spec.seLinuxContext, this.options.publishTimeoutMs)),
    ]).then(([recorded, prepared]): PreparedTarget => {
      if (recorded.status === "rejected") throw recorded.reason;
      if (prepared.status === "rejected") throw prepared.reason;
      return prepared.value;
    });
    const volume = new Volume(spec, { phase: "publishing" }, this.options.volume, targetReady);
    try {
      this.volumes.set(spec.volumeId, volume);
      volume.start();
      await targetReady;
      await this.untilShutdown(volume, deadline - performance.now());
    } catch (error) {
      this.volumes.delete(spec.volumeId);
      await volume.stop();
      // The cleanup gets a short bound of its own, so the answer comes at most that much after
      // the deadline; an unmount still running then is killed by the mount runner.
      const cleanupDeadline = performance.now() + cleanupTimeoutMs;
      await releaseTarget(spec.targetPath, cleanupTimeoutMs).catch((cleanupError: unknown) =>
        logger.error({ volumeId: spec.volumeId, err: cleanupError }, "cleaning up a failed publish failed"),
      );
      // The publish's own error is what kubelet must see; a record left behind is dropped at the
      // next start, since its target is gone by then (removed just above, or by kubelet after a
      // final error).
      await within(this.options.store.delete(spec.volumeId), Math.max(0, cleanupDeadline - performance.now()), `removing the record of ${spec.volumeId}`).catch(
        (cleanupError: unknown) => logger.error({ volumeId: spec.volumeId, err: cleanupError }, "removing the record of a failed publish failed"),
      );
      const failure = this.publishFailure(volume, error);
      observer.publishFinished(failure.code, (performance.now() - started) / 1000);
      throw failure;
    }
    this.adoptionFailures.delete(spec.volumeId);
    const seconds = (performance.now() - started) / 1000;
    observer.publishFinished("ok", seconds);
    logger.info({ volumeId: spec.volumeId, pod: `${spec.pod.namespace}/${spec.pod.name}`, ms: Math.round(seconds * 1000) }, "volume published");
  }

  /** A full metadata dir is the operator's to fix, and says so; anything else stays as it was. */
  private recordWriteFailure(volumeId: string, error: unknown): unknown {
    const errno = ((error as Error | undefined)?.cause as NodeJS.ErrnoException | undefined)?.code;
    if (errno !== "ENOSPC" && errno !== "EDQUOT") return error;
    return new DriverError(
      "resource-exhausted",
      `the metadata dir ${this.options.store.dir} is full (${errno}) writing the record of ${volumeId}: free space on its filesystem (each record is a few KiB; the chart's metadata hostPath shares the node's disk); nothing was mounted and kubelet retries`,
      { cause: error },
    );
  }

  private publishFailure(volume: Volume, error: unknown): DriverError {
    if (error instanceof DriverError) return error;
    const timedOut = error instanceof DOMException && error.name === "TimeoutError";
    const why = volume.explainMissingIdentity();
    const seconds = this.options.publishTimeoutMs / 1000;
    if (!timedOut) {
      return new DriverError("internal", `preparing ${volume.spec.targetPath} failed: ${(error as Error).message}`, { cause: error });
    }
    const message = `no identity within ${seconds}s: ${why.detail}`;
    switch (why.cause) {
      case "not-authorized":
        return new DriverError("failed-precondition", message);
      case "unreachable":
        return new DriverError("unavailable", message);
      default:
        return new DriverError("deadline-exceeded", message);
    }
  }

  private async unpublishLocked(volumeId: string, targetPath: string): Promise<void> {
    const logger = this.options.logger.child({ volumeId, targetPath });
    const volume = this.volumes.get(volumeId);
    const holder = this.targets.get(targetPath);
    if (volume && volume.spec.targetPath !== targetPath) {
      throw new DriverError(
        "failed-precondition",
        `target_path: volume ${volumeId} is published at ${volume.spec.targetPath}, not at ${targetPath}; nothing was unpublished`,
      );
    }
    let released: Awaited<ReturnType<typeof releaseTarget>> = "absent";
    const place = await placeOfTarget(targetPath, this.options.kubelet);
    if (place.kind === "outside") {
      // A symlinked ancestor: the dir behind it is not a volume of this node's pods.
      await volume?.stop();
      this.volumes.delete(volumeId);
      logger.warn({ resolvesTo: place.real }, "the target's dir resolves to a place outside kubelet's pods dir; left it untouched");
    } else if (volume) {
      await volume.stop();
      this.volumes.delete(volumeId);
      released = await releaseTarget(targetPath);
    } else if (holder !== undefined && holder !== volumeId) {
      // Another live volume's target: releasing it would unmount that volume's tmpfs under its
      // running stream. Only its own volume_id can unpublish it.
      logger.warn({ heldBy: holder }, "unpublish of an unknown volume names the target of another volume; left it untouched");
    } else if ((await isMountPoint(targetPath)) || (await hasSnapshot(targetPath))) {
      // Not ours in memory but our files are there (e.g. the record was lost): clean up anyway.
      released = await releaseTarget(targetPath);
    }
    if (released === "not-a-dir") {
      logger.warn("the target is a symlink or not a directory; left it untouched (unpublish never follows a link)");
    }
    // An error, not OK: kubelet retries the unpublish until the record is gone, so records stay
    // == published volumes. (Were OK answered, the start-up sweep would still drop the record,
    // since the target is gone by now, but only at the next start.)
    await this.options.store.delete(volumeId).catch((error: unknown) => {
      throw new DriverError(
        "internal",
        `volume ${volumeId} is unmounted and its files are gone, but deleting its record in the metadata dir ${this.options.store.dir} failed: ${(error as Error).message}; kubelet retries the unpublish (check that the dir is writable)`,
        { cause: error },
      );
    });
    this.adoptionFailures.delete(volumeId);
    logger.info("volume unpublished");
  }

  /**
   * Re-adopts every recorded volume whose target still exists (resubscribe; files are rewritten
   * from the first SVID set) and drops the records whose target kubelet already removed. Does
   * not wait for the agent: a volume keeps its old files until the stream delivers.
   */
  async adoptAll(): Promise<AdoptionReport> {
    const { records, quarantined } = await this.options.store.list();
    const report: AdoptionReport = { adopted: 0, removedStale: 0, quarantined: quarantined.length };
    for (const { file, reason } of quarantined) this.adoptionFailures.set(file.replace(/\.json$/, ""), reason);
    // Records are independent: checking hundreds one after another would keep every pod waiting
    // for its rewrite behind the disk round trips of all the others. One read of the mount table
    // serves them all.
    const mountTable = await readMountPoints();
    const outcomes = await Promise.all(records.map((record) => this.adopt(record, mountTable)));
    for (const outcome of outcomes) {
      if (outcome === "adopted") report.adopted += 1;
      if (outcome === "removed-stale") report.removedStale += 1;
      if (outcome === "quarantined") report.quarantined += 1;
    }
    this.options.logger.info(report, "re-adopted recorded volumes");
    return report;
  }

  private async adopt(record: VolumeRecord, mountTable: ReadonlySet<string>): Promise<AdoptionOutcome> {
    const logger = this.options.logger.child({ volumeId: record.volumeId });
    let spec: VolumeSpec;
    try {
      spec = fromRecord(record, this.options.kubelet.root);
    } catch (error) {
      // A record kubelet's request could not have produced: it was not written by this driver
      // as it is now (tampered, or from another kubelet root). Acting on it would mount and write
      // wherever it points, with selectors from whatever it holds.
      const reason = `fails the publish rules: ${(error as Error).message}`;
      await this.options.store.quarantineRecord(record.volumeId, reason).catch((quarantineError: unknown) =>
        logger.error({ reason: (quarantineError as Error).message }, "moving an invalid record to quarantine failed"),
      );
      this.adoptionFailures.set(record.volumeId, reason);
      return "quarantined";
    }
    try {
      this.reserveTarget(record.volumeId, record.targetPath);
    } catch (error) {
      const reason = (error as Error).message;
      logger.error({ reason }, "cannot re-adopt volume; leaving its record for the next start");
      this.adoptionFailures.set(record.volumeId, reason);
      return "left-for-next-start";
    }
    const outcome = await this.adoptReserved(spec, mountTable, logger);
    this.settleReservation(record.volumeId, record.targetPath);
    return outcome;
  }

  private async adoptReserved(spec: VolumeSpec, mountTable: ReadonlySet<string>, logger: Logger): Promise<AdoptionOutcome> {
    if (!(await exists(spec.targetPath))) {
      try {
        await this.options.store.delete(spec.volumeId);
      } catch (error) {
        logger.error({ reason: (error as Error).message }, "target is gone but its record could not be dropped; trying again at the next start");
        return "left-for-next-start";
      }
      logger.info({ targetPath: spec.targetPath }, "target is gone; dropped the volume's record");
      return "removed-stale";
    }
    let prepared: PreparedTarget;
    try {
      await requireUnderPods(spec.targetPath, this.options.kubelet);
      prepared = await prepareTarget(spec.targetPath, this.options.backing, spec.fsGroup, mountTable);
    } catch (error) {
      const reason = (error as Error).message;
      logger.error({ reason }, "cannot re-adopt volume; leaving its record for the next start");
      this.adoptionFailures.set(spec.volumeId, reason);
      return "left-for-next-start";
    }
    const identity = await this.identityLeftInFiles(spec, logger);
    const volume = new Volume(spec, { phase: "adopting", identity }, this.options.volume, Promise.resolve(prepared));
    this.volumes.set(spec.volumeId, volume);
    volume.start();
    return "adopted";
  }

  /**
   * The SVID the previous process left in an adopted volume's files: while the agent issues none
   * (entry deleted), it is all that tells the operator when the pod's certificate expires. A target
   * with no snapshot (node reboot: a fresh tmpfs) holds none, and says nothing.
   */
  private async identityLeftInFiles(spec: VolumeSpec, logger: Logger): Promise<WrittenIdentity | undefined> {
    if (!(await hasSnapshot(spec.targetPath))) return undefined;
    try {
      return await readIdentityInFiles(spec.targetPath, spec.attributes);
    } catch (error) {
      logger.warn({ reason: (error as Error).message }, "cannot tell which SVID the volume's files hold; its expiry is unknown until the agent issues one");
      return undefined;
    }
  }

  /**
   * Stops every stream; files and tmpfs mounts stay for the next process to re-adopt. First every
   * publish or unpublish under way ends: a publish still waiting for its first SVID (up to the
   * publish timeout, longer than the pod's termination grace) gives up, removes what it made and
   * answers UNAVAILABLE, so kubelet retries against the next process and no call is dropped with a
   * record or a mount behind it. New calls are refused the same way.
   */
  async shutdown(): Promise<void> {
    this.stopping.abort();
    while (this.operations.size > 0) await Promise.all([...this.operations]);
    await Promise.all([...this.volumes.values()].map((volume) => volume.stop()));
    this.volumes.clear();
    this.targets.clear();
  }
}

function toRecord(spec: VolumeSpec): VolumeRecord {
  return {
    schemaVersion: 1,
    volumeId: spec.volumeId,
    targetPath: spec.targetPath,
    podUid: spec.pod.uid,
    podName: spec.pod.name,
    podNamespace: spec.pod.namespace,
    serviceAccount: spec.pod.serviceAccount,
    attributes: spec.rawAttributes,
    ...(spec.fsGroup === undefined ? {} : { fsGroup: spec.fsGroup }),
    readOnly: true,
    createdAt: new Date().toISOString(),
  };
}

/** The record as a VolumeSpec, held to the rules of a publish request (throws DriverError naming the field). */
function fromRecord(record: VolumeRecord, kubeletRoot: string): VolumeSpec {
  const pod = { uid: record.podUid, name: record.podName, namespace: record.podNamespace, serviceAccount: record.serviceAccount };
  checkRecordedVolume({ volumeId: record.volumeId, targetPath: record.targetPath, pod }, kubeletRoot);
  const { raw, attributes } = parseVolumeAttributes(record.attributes);
  checkKeyMode(attributes.keyMode, record.fsGroup);
  return {
    volumeId: record.volumeId,
    targetPath: record.targetPath,
    pod,
    rawAttributes: raw,
    attributes,
    fsGroup: record.fsGroup,
  };
}

function shuttingDown(volumeId: string): DriverError {
  return new DriverError("unavailable", `the driver is shutting down; volume ${volumeId} was not published and nothing of it was left; kubelet retries against the next driver process`);
}

/** Bound of the cleanup after a failed publish (an unmount and a record delete: milliseconds when healthy). */
const cleanupTimeoutMs = 2_000;

/** `work`'s outcome, or a deadline-exceeded error once `ms` pass; the work itself is not stopped. */
function within<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DriverError("deadline-exceeded", `${what} did not finish within ${ms / 1000}s; kubelet retries`)), ms);
  });
  return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
