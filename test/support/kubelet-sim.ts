import { createHash } from "node:crypto";
import { mkdir, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Identity,
  Node,
  NodeServiceCapability_RPC_Type as RpcType,
  VolumeCapability_AccessMode_Mode as AccessMode,
  type NodePublishVolumeRequestSchema,
} from "../../src/gen/csi/v1/csi_pb.js";

export interface PodSpec {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  fsGroup?: number;
  /**
   * The csi volume's `readOnly` as the pod spec writes it. kubelet's default is false; the tests'
   * pods follow the documented spec (`readOnly: true`), so omitted means true here. Pass false
   * for a spec that leaves it out.
   */
  readOnly?: boolean;
}

export interface PublishedVolume {
  volumeId: string;
  targetPath: string;
  volumeName: string;
  pod: PodSpec;
}

export interface PublishOutcome extends PublishedVolume {
  attempts: number;
  /** The last NodePublishVolume call alone (kubelet's own preparation excluded): performance.now() at its start, and its milliseconds. */
  rpc: { startedAt: number; ms: number };
  /** The final error; undefined when the volume was published. */
  error?: ConnectError;
  /** Which call the final error came from: kubelet's capability check (no publish was sent) or NodePublishVolume. */
  failedAt?: "capability-check" | "publish";
  /** Why kubelet's cleanup after a final error failed (kubelet only logs it), e.g. files left in the target. */
  cleanupError?: unknown;
}

export interface PublishOptions {
  /** Attempts before giving up (kubelet itself never gives up while the pod exists). Default 8. */
  maxAttempts?: number;
  /** Stop retrying once this much time has passed since the first attempt (no limit by default). */
  retryBudgetMs?: number;
  /** Cap of the retry delay; kubelet's is 2 m 2 s. */
  maxDelayMs?: number;
  /** Per-call deadline; kubelet's is 2 minutes. */
  callTimeoutMs?: number;
  /**
   * kubelet's reconciler retries final errors too (as a fresh attempt); tests usually want the
   * final error at once, so only uncertain codes are retried unless this is set.
   */
  retryFinalErrors?: boolean;
}

export type NodePublishVolumeRequestInit = MessageInitShape<typeof NodePublishVolumeRequestSchema>;

export const csiDriverName = "csi.spire.io";
const kubeletCallTimeoutMs = 120_000;
const firstRetryDelayMs = 500;

/**
 * Codes after which kubelet treats the volume as possibly mounted ("uncertain"): it keeps the
 * target dir, retries, and calls NodeUnpublishVolume later. Any other code is final.
 */
export const uncertainCodes: ReadonlySet<Code> = new Set([Code.Canceled, Code.DeadlineExceeded, Code.Unavailable, Code.ResourceExhausted, Code.Aborted]);

const socketErrors = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE", "ECONNABORTED"]);

/**
 * The error as kubelet's gRPC client sees it: grpc-go reports a plugin socket that is missing,
 * refusing or reset as Unavailable, where connect-node reports Internal with the errno as cause.
 * (kubelet also treats any error without a gRPC status as uncertain; every error here has one.)
 */
export function asKubeletSees(error: ConnectError): ConnectError {
  const errno = (error.cause as NodeJS.ErrnoException | undefined)?.code;
  if (error.code === Code.Internal && errno !== undefined && socketErrors.has(errno)) {
    return new ConnectError(error.rawMessage, Code.Unavailable, undefined, undefined, error.cause);
  }
  return error;
}

/** kubelet's exponential backoff for volume operations (nestedpendingoperations): 500 ms, doubling, at most 2 m 2 s. */
const maxRetryDelayMs = 122_000;

/** kubelet's volume handle for an inline CSI volume (pkg/volume/csi makeVolumeHandle). */
export function ephemeralVolumeId(podUid: string, volumeName: string): string {
  return `csi-${createHash("sha256").update(`${podUid}${volumeName}`).digest("hex")}`;
}

/** kubelet's VolumeAttachment name, stored in vol_data.json (pkg/volume/csi getAttachmentName). */
export function attachmentName(volumeHandle: string, driverName: string, nodeName: string): string {
  return `csi-${createHash("sha256").update(`${volumeHandle}${driverName}${nodeName}`).digest("hex")}`;
}

export function targetPathFor(kubeletRoot: string, podUid: string, volumeName: string): string {
  return join(kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", volumeName, "mount");
}

/** The volume_context keys kubelet adds with `podInfoOnMount: true`; they override the user's attributes. */
export function podInfoOnMountAttributes(pod: PodSpec): Record<string, string> {
  return {
    "csi.storage.k8s.io/pod.name": pod.name,
    "csi.storage.k8s.io/pod.namespace": pod.namespace,
    "csi.storage.k8s.io/pod.uid": pod.uid,
    "csi.storage.k8s.io/serviceAccount.name": pod.serviceAccount,
    "csi.storage.k8s.io/ephemeral": "true",
  };
}

/**
 * Makes exactly the CSI calls kubelet makes for an inline `csi.spire.io` volume: the same volume
 * handle, target layout, vol_data.json, volume_context keys, capability and readonly flag; it
 * creates only the target's parent, retries uncertain errors with kubelet's backoff, cleans up
 * after final errors, and removes the target with a plain rmdir after unpublish.
 */
export class KubeletSimulator {
  readonly identity: Client<typeof Identity>;
  readonly node: Client<typeof Node>;
  /** Whether the driver advertised VOLUME_MOUNT_GROUP (then fsGroup goes in volume_mount_group). */
  mountGroupSupported = false;
  /** Whether the driver advertised SINGLE_NODE_MULTI_WRITER (then ReadWriteOnce maps to it, not SINGLE_NODE_WRITER). */
  multiWriterSupported = false;
  private readonly published = new Map<string, PublishedVolume>();
  /** The HTTP/2 connections to the plugin, so `close()` can end them (they would keep the process alive). */
  private readonly sockets = new Set<Socket>();

  constructor(private readonly options: { pluginSocket: string; kubeletRoot: string; nodeName: string; driverName?: string }) {
    const transport = createGrpcTransport({
      baseUrl: "http://localhost",
      nodeOptions: {
        createConnection: () => {
          const socket = connect(options.pluginSocket);
          this.sockets.add(socket);
          socket.once("close", () => this.sockets.delete(socket));
          return socket;
        },
      },
    });
    this.identity = createClient(Identity, transport);
    this.node = createClient(Node, transport);
  }

  /** Volumes published and not yet unpublished. */
  get publishedVolumes(): PublishedVolume[] {
    return [...this.published.values()];
  }

  /** node-driver-registrar's and kubelet's calls when the plugin registers. */
  async register(): Promise<{ name: string; vendorVersion: string; nodeId: string; mountGroupSupported: boolean }> {
    const info = await this.identity.getPluginInfo({});
    const nodeInfo = await this.node.nodeGetInfo({});
    await this.refreshCapabilities();
    return { name: info.name, vendorVersion: info.vendorVersion, nodeId: nodeInfo.nodeId, mountGroupSupported: this.mountGroupSupported };
  }

  /** The NodePublishVolume request kubelet would send (for tests that send variations of it). */
  publishRequest(pod: PodSpec, volumeName: string, attributes: Record<string, string> = {}): NodePublishVolumeRequestInit {
    const mountGroup = this.mountGroupSupported && pod.fsGroup !== undefined ? String(pod.fsGroup) : "";
    return {
      volumeId: ephemeralVolumeId(pod.uid, volumeName),
      targetPath: this.targetPath(pod.uid, volumeName),
      readonly: pod.readOnly ?? true,
      volumeCapability: {
        accessType: mountAccess(mountGroup),
        accessMode: { mode: this.multiWriterSupported ? AccessMode.SINGLE_NODE_MULTI_WRITER : AccessMode.SINGLE_NODE_WRITER },
      },
      volumeContext: { ...attributes, ...podInfoOnMountAttributes(pod) },
    };
  }

  targetPath(podUid: string, volumeName: string): string {
    return targetPathFor(this.options.kubeletRoot, podUid, volumeName);
  }

  /** Publishes like kubelet and throws the final ConnectError if it fails. */
  async publish(pod: PodSpec, volumeName: string, attributes: Record<string, string> = {}, options: PublishOptions = {}): Promise<PublishedVolume & Pick<PublishOutcome, "attempts" | "rpc">> {
    const outcome = await this.tryPublish(pod, volumeName, attributes, options);
    if (outcome.error) throw outcome.error;
    return outcome;
  }

  /** Publishes like kubelet and returns the outcome, the final error included. */
  async tryPublish(pod: PodSpec, volumeName: string, attributes: Record<string, string> = {}, options: PublishOptions = {}): Promise<PublishOutcome> {
    const request = this.publishRequest(pod, volumeName, attributes);
    const volumeId = request.volumeId!;
    const targetPath = request.targetPath!;
    const volume: PublishedVolume = { volumeId, targetPath, volumeName, pod };
    const maxAttempts = options.maxAttempts ?? 8;
    const started = Date.now();
    let delayMs = firstRetryDelayMs;
    for (let attempt = 1; ; attempt++) {
      // kubelet's SetUpAt order: volume dir, capability check, vol_data.json, publish.
      await mkdir(dirname(targetPath), { recursive: true, mode: 0o750 });
      let rpcStarted = performance.now();
      let outcome: { error: ConnectError; transient: boolean } | undefined;
      try {
        await this.refreshCapabilities();
      } catch (error) {
        // A failed capability check is a transient failure: retried, nothing cleaned up, and not
        // uncertain either (nothing was published).
        outcome = { error: asKubeletSees(ConnectError.from(error)), transient: true };
      }
      if (!outcome) {
        request.volumeCapability!.accessType = mountAccess(this.mountGroupSupported && pod.fsGroup !== undefined ? String(pod.fsGroup) : "");
        request.volumeCapability!.accessMode = { mode: this.multiWriterSupported ? AccessMode.SINGLE_NODE_MULTI_WRITER : AccessMode.SINGLE_NODE_WRITER };
        await this.writeVolumeData(volumeId, volumeName, targetPath);
        rpcStarted = performance.now();
        try {
          await this.node.nodePublishVolume(request, { timeoutMs: options.callTimeoutMs ?? kubeletCallTimeoutMs });
          const rpc = { startedAt: rpcStarted, ms: performance.now() - rpcStarted };
          this.published.set(volumeId, volume);
          return { ...volume, attempts: attempt, rpc };
        } catch (error) {
          outcome = { error: asKubeletSees(ConnectError.from(error)), transient: false };
        }
      }
      const { error, transient } = outcome;
      const uncertain = !transient && uncertainCodes.has(error.code);
      // A final error: kubelet removes the mount dir, vol_data.json and the volume dir, and
      // will not call NodeUnpublishVolume for this attempt. Uncertain: everything stays.
      let cleanupError: unknown;
      if (!transient && !uncertain) await removeMountDir(targetPath).catch((cleanup: unknown) => (cleanupError = cleanup));
      const budgetLeft = options.retryBudgetMs === undefined || Date.now() - started + delayMs <= options.retryBudgetMs;
      const retryable = uncertain || transient || options.retryFinalErrors === true;
      if (!retryable || attempt >= maxAttempts || !budgetLeft) {
        // An uncertain outcome may have mounted: remember it so unpublishAll() tears it down, as kubelet would.
        if (uncertain) this.published.set(volumeId, volume);
        const rpc = { startedAt: rpcStarted, ms: performance.now() - rpcStarted };
        return { ...volume, attempts: attempt, rpc, error, failedAt: transient ? "capability-check" : "publish", ...(cleanupError === undefined ? {} : { cleanupError }) };
      }
      await sleep(delayMs);
      delayMs = Math.min(delayMs * 2, options.maxDelayMs ?? maxRetryDelayMs);
    }
  }

  /**
   * kubelet's teardown: NodeUnpublishVolume, then a plain rmdir of the target (fails if the driver
   * left files). kubelet retries a failed teardown with its backoff for as long as it takes;
   * `maxAttempts` (default 1: the first error is thrown) bounds that here.
   */
  async unpublish(volume: Pick<PublishedVolume, "volumeId" | "targetPath">, options: { maxAttempts?: number; maxDelayMs?: number } = {}): Promise<{ attempts: number }> {
    let delayMs = firstRetryDelayMs;
    for (let attempt = 1; ; attempt++) {
      try {
        try {
          await this.node.nodeUnpublishVolume({ volumeId: volume.volumeId, targetPath: volume.targetPath }, { timeoutMs: kubeletCallTimeoutMs });
        } catch (error) {
          throw asKubeletSees(ConnectError.from(error));
        }
        await removeMountDir(volume.targetPath);
        // Only now is teardown done; until then kubelet would retry it.
        this.published.delete(volume.volumeId);
        return { attempts: attempt };
      } catch (error) {
        if (attempt >= (options.maxAttempts ?? 1)) throw error;
        await sleep(delayMs);
        delayMs = Math.min(delayMs * 2, options.maxDelayMs ?? maxRetryDelayMs);
      }
    }
  }

  /** Unpublishes every volume still published (cleanup); throws the first error after trying all. */
  async unpublishAll(): Promise<void> {
    const errors: unknown[] = [];
    for (const volume of [...this.published.values()]) await this.unpublish(volume).catch((error: unknown) => errors.push(error));
    if (errors.length > 0) throw errors[0];
  }

  /** Drops the connections to the plugin (an in-process plugin's server cannot close while they are open). */
  close(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  private async refreshCapabilities(): Promise<void> {
    const capabilities = await this.node.nodeGetCapabilities({});
    const advertised = (type: RpcType) => capabilities.capabilities.some((capability) => capability.type.case === "rpc" && capability.type.value.type === type);
    this.mountGroupSupported = advertised(RpcType.VOLUME_MOUNT_GROUP);
    this.multiWriterSupported = advertised(RpcType.SINGLE_NODE_MULTI_WRITER);
  }

  /** kubelet's csi mounter persists this next to `mount` so it can tear the volume down after a restart. */
  private async writeVolumeData(volumeHandle: string, volumeName: string, targetPath: string): Promise<void> {
    const volumeDir = dirname(targetPath);
    const driverName = this.options.driverName ?? csiDriverName;
    const volumeData = {
      specVolID: volumeName,
      volumeHandle,
      driverName,
      nodeName: this.options.nodeName,
      attachmentID: attachmentName(volumeHandle, driverName, this.options.nodeName),
      volumeLifecycleMode: "Ephemeral",
    };
    await writeFile(join(volumeDir, "vol_data.json"), JSON.stringify(volumeData));
  }
}

/** An inline volume's Mount capability: no fsType, no mount flags (kubelet has none for inline volumes). */
function mountAccess(volumeMountGroup: string) {
  return { case: "mount" as const, value: { fsType: "", mountFlags: [], volumeMountGroup } };
}

/**
 * kubelet's removeMountDir: if the target is not a mount point, a plain rmdir of it (which fails
 * on leftover files), then vol_data.json and the volume dir. kubelet silently leaves a still
 * mounted target (the pod then never finishes terminating); the simulator reports it instead, so
 * a driver that forgets to unmount fails the test.
 */
async function removeMountDir(targetPath: string): Promise<void> {
  const target = await stat(targetPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (target) {
    const parent = await stat(dirname(targetPath));
    if (target.dev !== parent.dev) throw new Error(`${targetPath} is still a mount point; kubelet cannot remove it`);
    await rmdir(targetPath);
  }
  const volumeDir = dirname(targetPath);
  await rm(join(volumeDir, "vol_data.json"), { force: true });
  await rmdir(volumeDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
  });
}
