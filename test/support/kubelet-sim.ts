import { createHash } from "node:crypto";
import { mkdir, rm, rmdir, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  Identity,
  Node,
  NodeServiceCapability_RPC_Type as RpcType,
  VolumeCapability_AccessMode_Mode as AccessMode,
} from "../../src/gen/csi/v1/csi_pb.js";

export interface PodSpec {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
  fsGroup?: number;
}

export interface PublishedVolume {
  volumeId: string;
  targetPath: string;
  volumeName: string;
  pod: PodSpec;
}

export interface PublishOutcome extends PublishedVolume {
  attempts: number;
  error?: ConnectError;
}

export interface PublishOptions {
  /** Attempts before giving up (kubelet itself never gives up while the pod exists). */
  maxAttempts?: number;
  /** Cap of the retry delay; kubelet's is about 2 minutes. */
  maxDelayMs?: number;
  /**
   * kubelet's reconciler retries final errors too (as a fresh attempt); tests usually want the
   * final error at once, so only uncertain codes are retried unless this is set.
   */
  retryFinalErrors?: boolean;
}

/** Codes after which kubelet treats the volume as possibly mounted and will call unpublish. */
const uncertainCodes = new Set([Code.Canceled, Code.DeadlineExceeded, Code.Unavailable, Code.ResourceExhausted, Code.Aborted]);

/** kubelet's volume handle for an inline CSI volume (pkg/volume/csi makeVolumeHandle). */
export function ephemeralVolumeId(podUid: string, volumeName: string): string {
  return `csi-${createHash("sha256").update(`${podUid}${volumeName}`).digest("hex")}`;
}

export function targetPathFor(kubeletRoot: string, podUid: string, volumeName: string): string {
  return join(kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", volumeName, "mount");
}

/**
 * Makes exactly the CSI calls kubelet makes for an inline `csi.spire.io` volume: the same volume
 * handle, target layout, volume_context keys, capability and readonly flag; it creates only the
 * target's parent, retries with kubelet's backoff, and removes the target with a plain rmdir.
 */
export class KubeletSimulator {
  readonly identity: Client<typeof Identity>;
  readonly node: Client<typeof Node>;
  private mountGroupSupported = false;
  private readonly published = new Map<string, PublishedVolume>();

  constructor(private readonly options: { pluginSocket: string; kubeletRoot: string; nodeName: string; driverName?: string }) {
    const transport = createGrpcTransport({
      baseUrl: "http://localhost",
      nodeOptions: { createConnection: () => connect(options.pluginSocket) },
    });
    this.identity = createClient(Identity, transport);
    this.node = createClient(Node, transport);
  }

  /** node-driver-registrar's and kubelet's calls when the plugin registers. */
  async register(): Promise<{ name: string; nodeId: string }> {
    const info = await this.identity.getPluginInfo({});
    const nodeInfo = await this.node.nodeGetInfo({});
    const capabilities = await this.node.nodeGetCapabilities({});
    this.mountGroupSupported = capabilities.capabilities.some(
      (capability) => capability.type.case === "rpc" && capability.type.value.type === RpcType.VOLUME_MOUNT_GROUP,
    );
    return { name: info.name, nodeId: nodeInfo.nodeId };
  }

  /** Publishes like kubelet and throws the final ConnectError if it fails. */
  async publish(pod: PodSpec, volumeName: string, attributes: Record<string, string> = {}, options: PublishOptions = {}): Promise<PublishedVolume> {
    const outcome = await this.tryPublish(pod, volumeName, attributes, options);
    if (outcome.error) throw outcome.error;
    return outcome;
  }

  async tryPublish(pod: PodSpec, volumeName: string, attributes: Record<string, string> = {}, options: PublishOptions = {}): Promise<PublishOutcome> {
    const volumeId = ephemeralVolumeId(pod.uid, volumeName);
    const targetPath = targetPathFor(this.options.kubeletRoot, pod.uid, volumeName);
    const volumeDir = dirname(targetPath);
    await mkdir(volumeDir, { recursive: true, mode: 0o750 });
    await writeFile(
      join(volumeDir, "vol_data.json"),
      JSON.stringify({
        specVolID: volumeName,
        volumeHandle: volumeId,
        driverName: this.options.driverName ?? "csi.spire.io",
        nodeName: this.options.nodeName,
        volumeLifecycleMode: "Ephemeral",
      }),
    );
    const request = {
      volumeId,
      targetPath,
      readonly: true,
      volumeCapability: {
        accessType: {
          case: "mount" as const,
          value: { fsType: "", mountFlags: [], volumeMountGroup: this.mountGroupSupported && pod.fsGroup !== undefined ? String(pod.fsGroup) : "" },
        },
        accessMode: { mode: AccessMode.SINGLE_NODE_WRITER },
      },
      volumeContext: {
        ...attributes,
        "csi.storage.k8s.io/pod.name": pod.name,
        "csi.storage.k8s.io/pod.namespace": pod.namespace,
        "csi.storage.k8s.io/pod.uid": pod.uid,
        "csi.storage.k8s.io/serviceAccount.name": pod.serviceAccount,
        "csi.storage.k8s.io/ephemeral": "true",
      },
    };
    const maxAttempts = options.maxAttempts ?? 8;
    let delayMs = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.node.nodePublishVolume(request, { timeoutMs: 120_000 });
        const volume = { volumeId, targetPath, volumeName, pod };
        this.published.set(volumeId, volume);
        return { ...volume, attempts: attempt };
      } catch (error) {
        const connectError = ConnectError.from(error);
        if (!uncertainCodes.has(connectError.code)) {
          // A final error: kubelet removes the mount dir and does not unpublish.
          await rmdir(targetPath).catch(() => undefined);
        }
        const retryable = uncertainCodes.has(connectError.code) || options.retryFinalErrors === true;
        if (!retryable || attempt >= maxAttempts) return { volumeId, targetPath, volumeName, pod, attempts: attempt, error: connectError };
        await sleep(delayMs);
        delayMs = Math.min(delayMs * 2, options.maxDelayMs ?? 120_000);
      }
    }
  }

  /** kubelet's teardown: NodeUnpublishVolume, then a plain rmdir of the (now empty) target. */
  async unpublish(volume: PublishedVolume): Promise<void> {
    await this.node.nodeUnpublishVolume({ volumeId: volume.volumeId, targetPath: volume.targetPath }, { timeoutMs: 120_000 });
    await rmdir(volume.targetPath).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    await rm(dirname(volume.targetPath), { recursive: true, force: true });
    this.published.delete(volume.volumeId);
  }

  async unpublishAll(): Promise<void> {
    for (const volume of [...this.published.values()]) await this.unpublish(volume);
  }
}
