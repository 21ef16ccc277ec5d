import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:http2";
import { join } from "node:path";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  Identity,
  Node,
  NodeServiceCapability_RPC_Type as RpcType,
  VolumeCapability_AccessMode_Mode as AccessMode,
  type NodePublishVolumeRequest,
} from "../../src/gen/csi/v1/csi_pb.js";
import { ephemeralVolumeId, KubeletSimulator, targetPathFor } from "../support/kubelet-sim.js";

const pod = { uid: "d9b2c4e0-0000-4000-8000-000000000001", name: "web-0", namespace: "demo", serviceAccount: "web", fsGroup: 2000 };
/** sha256("d9b2c4e0-0000-4000-8000-000000000001" + "spiffe"), computed with sha256sum. */
const knownVolumeId = "csi-f233d4a704bdbad693c3c67028c6605de32925ac5ffb4a1840e927fb5c3ba4d2";
/** sha256(knownVolumeId + "csi.spire.io" + "test-node"), kubelet's attachmentID, computed with sha256sum. */
const knownAttachmentId = "csi-7e6c64705fe6e078815338b748a7c80005937dff9742eee531d3a078bfd85f9e";

interface PublishSeen {
  request: NodePublishVolumeRequest;
  targetExisted: boolean;
  parentMode: number;
  volumeData: unknown;
}

/** A scripted CSI node plugin that records what the simulator sends it. */
interface StubDriver {
  calls: string[];
  publishes: PublishSeen[];
  /** Errors the next publishes fail with, in order; then they succeed. */
  failures: ConnectError[];
  advertiseMountGroup: boolean;
  /** Leave the files in the target on unpublish (a buggy driver). */
  leaveFilesOnUnpublish: boolean;
  /** Create the target and a file before failing (a driver that does not clean up its failure). */
  createTargetBeforeFailing: boolean;
  advertiseMultiWriter: boolean;
  /** Errors the next NodeGetCapabilities calls fail with, in order. */
  capabilityFailures: ConnectError[];
  /** Errors the next NodeUnpublishVolume calls fail with, in order. */
  unpublishFailures: ConnectError[];
}

async function startStubDriver(t: TestContext): Promise<{ stub: StubDriver; kubelet: KubeletSimulator; kubeletRoot: string }> {
  const dir = await mkdtemp("/tmp/ks-");
  const socketPath = join(dir, "csi.sock");
  const kubeletRoot = join(dir, "kubelet");
  const stub: StubDriver = { calls: [], publishes: [], failures: [], advertiseMountGroup: false, leaveFilesOnUnpublish: false, createTargetBeforeFailing: false, advertiseMultiWriter: false, capabilityFailures: [], unpublishFailures: [] };
  const handler = connectNodeAdapter({
    grpc: true,
    connect: false,
    grpcWeb: false,
    routes: (router) => {
      router.service(Identity, {
        getPluginInfo: () => {
          stub.calls.push("GetPluginInfo");
          return { name: "csi.spire.io", vendorVersion: "0.0.0-stub" };
        },
      });
      router.service(Node, {
        nodeGetInfo: () => {
          stub.calls.push("NodeGetInfo");
          return { nodeId: "test-node" };
        },
        nodeGetCapabilities: () => {
          stub.calls.push("NodeGetCapabilities");
          const failure = stub.capabilityFailures.shift();
          if (failure) throw failure;
          const types = [...(stub.advertiseMountGroup ? [RpcType.VOLUME_MOUNT_GROUP] : []), ...(stub.advertiseMultiWriter ? [RpcType.SINGLE_NODE_MULTI_WRITER] : [])];
          return { capabilities: types.map((type) => ({ type: { case: "rpc" as const, value: { type } } })) };
        },
        nodePublishVolume: async (request) => {
          stub.calls.push("NodePublishVolume");
          const parent = join(request.targetPath, "..");
          stub.publishes.push({
            request,
            targetExisted: existsSync(request.targetPath),
            parentMode: (await stat(parent)).mode & 0o777,
            volumeData: JSON.parse(await readFile(join(parent, "vol_data.json"), "utf8")),
          });
          const failure = stub.failures.shift();
          if (failure && !stub.createTargetBeforeFailing) throw failure;
          await mkdir(request.targetPath, { recursive: true });
          await writeFile(join(request.targetPath, "tls.crt"), "cert");
          if (failure) throw failure;
          return {};
        },
        nodeUnpublishVolume: async (request) => {
          stub.calls.push("NodeUnpublishVolume");
          const failure = stub.unpublishFailures.shift();
          if (failure) throw failure;
          if (!stub.leaveFilesOnUnpublish) await rm(join(request.targetPath, "tls.crt"), { force: true });
          return {};
        },
      });
    },
  });
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const kubelet = new KubeletSimulator({ pluginSocket: socketPath, kubeletRoot, nodeName: "test-node" });
  t.after(async () => {
    kubelet.close();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  return { stub, kubelet, kubeletRoot };
}

describe("kubelet simulator", () => {
  test("volume_id is csi- + hex(sha256(podUID + volumeName)), checked against a vector computed by hand", () => {
    assert.equal(ephemeralVolumeId(pod.uid, "spiffe"), knownVolumeId);
  });

  test("the target path is kubelet's layout for an inline CSI volume", () => {
    assert.equal(
      targetPathFor("/var/lib/kubelet", pod.uid, "spiffe"),
      "/var/lib/kubelet/pods/d9b2c4e0-0000-4000-8000-000000000001/volumes/kubernetes.io~csi/spiffe/mount",
    );
  });

  test("register makes the registrar's and kubelet's calls", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.advertiseMountGroup = true;
    const registered = await kubelet.register();
    assert.deepEqual(stub.calls, ["GetPluginInfo", "NodeGetInfo", "NodeGetCapabilities"]);
    assert.deepEqual(registered, { name: "csi.spire.io", vendorVersion: "0.0.0-stub", nodeId: "test-node", mountGroupSupported: true });
  });

  test("publish sends kubelet's exact request, creates only the parent (0750) and writes vol_data.json", async (t) => {
    const { stub, kubelet, kubeletRoot } = await startStubDriver(t);
    await kubelet.register();
    const volume = await kubelet.publish(pod, "spiffe", {
      "csi.spire.io/layout": "spiffe-fs",
      "csi.storage.k8s.io/pod.name": "claimed-by-the-user",
      "csi.storage.k8s.io/serviceAccount.name": "admin",
    });
    const targetPath = `${kubeletRoot}/pods/${pod.uid}/volumes/kubernetes.io~csi/spiffe/mount`;
    assert.deepEqual({ volumeId: volume.volumeId, targetPath: volume.targetPath, attempts: volume.attempts }, { volumeId: knownVolumeId, targetPath, attempts: 1 });
    assert.deepEqual(stub.calls.slice(3), ["NodeGetCapabilities", "NodePublishVolume"], "kubelet checks VOLUME_MOUNT_GROUP before each publish");

    const [seen] = stub.publishes;
    assert.ok(seen);
    assert.equal(seen.targetExisted, false, "kubelet leaves creating `mount` to the driver");
    assert.equal(seen.parentMode, 0o750);
    assert.deepEqual(seen.volumeData, {
      specVolID: "spiffe",
      volumeHandle: knownVolumeId,
      driverName: "csi.spire.io",
      nodeName: "test-node",
      attachmentID: knownAttachmentId,
      volumeLifecycleMode: "Ephemeral",
    });
    const request = seen.request;
    assert.equal(request.volumeId, knownVolumeId);
    assert.equal(request.targetPath, targetPath);
    assert.equal(request.readonly, true);
    assert.equal(request.stagingTargetPath, "");
    assert.deepEqual(request.publishContext, {});
    assert.deepEqual(request.secrets, {});
    assert.equal(request.volumeCapability?.accessMode?.mode, AccessMode.SINGLE_NODE_WRITER);
    assert.equal(request.volumeCapability?.accessType.case, "mount");
    const mount = request.volumeCapability?.accessType.value;
    assert.deepEqual({ fsType: mount?.fsType, mountFlags: mount?.mountFlags, volumeMountGroup: mount?.volumeMountGroup }, { fsType: "", mountFlags: [], volumeMountGroup: "" });
    assert.deepEqual(request.volumeContext, {
      "csi.spire.io/layout": "spiffe-fs",
      "csi.storage.k8s.io/pod.name": "web-0",
      "csi.storage.k8s.io/pod.namespace": "demo",
      "csi.storage.k8s.io/pod.uid": pod.uid,
      "csi.storage.k8s.io/serviceAccount.name": "web",
      "csi.storage.k8s.io/ephemeral": "true",
    });
  });

  test("volume_mount_group carries the fsGroup only when the driver advertises VOLUME_MOUNT_GROUP", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    await kubelet.publish(pod, "without");
    stub.advertiseMountGroup = true;
    await kubelet.publish(pod, "with");
    await kubelet.publish({ ...pod, fsGroup: undefined }, "no-fsgroup");
    const groups = stub.publishes.map((seen) => (seen.request.volumeCapability?.accessType.case === "mount" ? seen.request.volumeCapability.accessType.value.volumeMountGroup : undefined));
    assert.deepEqual(groups, ["", "2000", ""]);
  });

  test("uncertain errors are retried with kubelet's backoff (500 ms, then doubling)", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.failures.push(new ConnectError("agent away", Code.Unavailable), new ConnectError("slow", Code.DeadlineExceeded));
    const started = Date.now();
    const volume = await kubelet.publish(pod, "spiffe");
    const elapsed = Date.now() - started;
    assert.equal(volume.attempts, 3);
    assert.ok(elapsed >= 1_450 && elapsed < 3_000, `waited 500 + 1000 ms (${elapsed} ms)`);
    assert.equal(stub.publishes.length, 3);
  });

  test("retries stop at maxAttempts or the retry budget; an uncertain outcome is remembered for unpublishAll", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.failures.push(...Array.from({ length: 10 }, () => new ConnectError("agent away", Code.Unavailable)));
    const capped = await kubelet.tryPublish(pod, "a", {}, { maxAttempts: 2 });
    assert.deepEqual({ attempts: capped.attempts, code: capped.error?.code }, { attempts: 2, code: Code.Unavailable });
    const budgeted = await kubelet.tryPublish(pod, "b", {}, { retryBudgetMs: 1_000 });
    assert.equal(budgeted.attempts, 2, "500 ms then 1000 ms would exceed a 1 s budget");
    assert.equal(existsSync(join(capped.targetPath, "..", "vol_data.json")), true, "uncertain: kubelet keeps the volume dir");
    assert.deepEqual(kubelet.publishedVolumes.map((volume) => volume.volumeName).sort(), ["a", "b"]);
    await kubelet.unpublishAll();
    assert.equal(stub.calls.filter((call) => call === "NodeUnpublishVolume").length, 2);
    assert.equal(existsSync(join(capped.targetPath, "..")), false);
  });

  test("a final error is not retried: kubelet removes the mount dir, vol_data.json and the volume dir", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.failures.push(new ConnectError("bad attribute", Code.InvalidArgument));
    const outcome = await kubelet.tryPublish(pod, "spiffe");
    assert.deepEqual({ attempts: outcome.attempts, code: outcome.error?.code }, { attempts: 1, code: Code.InvalidArgument });
    assert.equal(existsSync(join(outcome.targetPath, "..")), false, "volume dir removed");
    assert.equal(kubelet.publishedVolumes.length, 0, "kubelet never unpublishes a final failure");
  });

  test("a final error after the driver left files: kubelet's plain rmdir fails and the outcome says so", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.createTargetBeforeFailing = true;
    stub.failures.push(new ConnectError("half done", Code.Internal));
    const outcome = await kubelet.tryPublish(pod, "spiffe");
    assert.equal(outcome.error?.code, Code.Internal);
    assert.match(String(outcome.cleanupError), /ENOTEMPTY/);
    assert.equal(existsSync(join(outcome.targetPath, "tls.crt")), true);
  });

  test("publish throws the final ConnectError", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.failures.push(new ConnectError("no", Code.PermissionDenied));
    await assert.rejects(kubelet.publish(pod, "spiffe"), (error: unknown) => error instanceof ConnectError && error.code === Code.PermissionDenied);
  });

  test("unpublish: NodeUnpublishVolume, then a plain rmdir of the target, vol_data.json and the volume dir", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    const volume = await kubelet.publish(pod, "spiffe");
    assert.equal(existsSync(join(volume.targetPath, "tls.crt")), true);
    await kubelet.unpublish(volume);
    assert.equal(stub.calls.at(-1), "NodeUnpublishVolume");
    assert.equal(existsSync(join(volume.targetPath, "..")), false);
    assert.equal(existsSync(join(volume.targetPath, "..", "..")), true, "only this volume's dir goes");
    assert.equal(kubelet.publishedVolumes.length, 0);
  });

  test("unpublish fails when the driver left files in the target, as kubelet's rmdir would", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.leaveFilesOnUnpublish = true;
    const volume = await kubelet.publish(pod, "spiffe");
    await assert.rejects(kubelet.unpublish(volume), /ENOTEMPTY/);
    assert.equal(kubelet.publishedVolumes.length, 1, "teardown is still pending, as in kubelet");
  });

  test("a missing plugin socket is Unavailable, as grpc-go reports it: publish keeps the volume dir and retries, unpublish fails uncertain", async () => {
    const dir = await mkdtemp("/tmp/ks-");
    try {
      const kubelet = new KubeletSimulator({ pluginSocket: join(dir, "gone.sock"), kubeletRoot: join(dir, "kubelet"), nodeName: "test-node" });
      const outcome = await kubelet.tryPublish(pod, "spiffe", {}, { maxAttempts: 2 });
      assert.deepEqual({ attempts: outcome.attempts, code: outcome.error?.code }, { attempts: 2, code: Code.Unavailable });
      assert.equal(existsSync(join(outcome.targetPath, "..")), true, "a transient failure removes nothing");
      await assert.rejects(kubelet.unpublish(outcome), (error: unknown) => error instanceof ConnectError && error.code === Code.Unavailable);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a failed capability check is transient: retried, no publish call, nothing removed, nothing to unpublish", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.capabilityFailures.push(new ConnectError("busy", Code.Internal), new ConnectError("busy", Code.Internal));
    const outcome = await kubelet.tryPublish(pod, "spiffe", {}, { maxAttempts: 2 });
    assert.deepEqual({ attempts: outcome.attempts, code: outcome.error?.code }, { attempts: 2, code: Code.Internal });
    assert.equal(stub.publishes.length, 0);
    assert.equal(existsSync(join(outcome.targetPath, "..")), true, "an Internal capability error is not final: the volume dir stays");
    assert.equal(kubelet.publishedVolumes.length, 0, "nothing was published, so nothing is uncertain");
    const volume = await kubelet.publish(pod, "spiffe");
    assert.equal(volume.attempts, 1);
  });

  test("NodeGetCapabilities inside each publish decides the access mode: SINGLE_NODE_MULTI_WRITER when advertised", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    await kubelet.publish(pod, "a");
    stub.advertiseMultiWriter = true;
    await kubelet.publish(pod, "b");
    assert.deepEqual(stub.publishes.map((seen) => seen.request.volumeCapability?.accessMode?.mode), [AccessMode.SINGLE_NODE_WRITER, AccessMode.SINGLE_NODE_MULTI_WRITER]);
  });

  test("readonly is the volume's csi.readOnly: false for a pod spec that leaves it out", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    await kubelet.publish({ ...pod, readOnly: false }, "a");
    await kubelet.publish(pod, "b");
    assert.deepEqual(stub.publishes.map((seen) => seen.request.readonly), [false, true]);
  });

  test("final errors are retried when asked, as kubelet's reconciler does: a fresh dir and vol_data.json each time", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    stub.failures.push(new ConnectError("not yet", Code.FailedPrecondition), new ConnectError("not yet", Code.FailedPrecondition));
    const volume = await kubelet.publish(pod, "spiffe", {}, { retryFinalErrors: true, maxDelayMs: 100 });
    assert.equal(volume.attempts, 3);
    assert.deepEqual(stub.publishes.map((seen) => seen.targetExisted), [false, false, false], "the failed attempt's dir was removed");
    assert.ok(stub.publishes.every((seen) => (seen.volumeData as { volumeHandle: string }).volumeHandle === knownVolumeId));
  });

  test("teardown is retried with kubelet's backoff until it succeeds", async (t) => {
    const { stub, kubelet } = await startStubDriver(t);
    const volume = await kubelet.publish(pod, "spiffe");
    stub.unpublishFailures.push(new ConnectError("driver restarting", Code.Unavailable), new ConnectError("still", Code.Unavailable));
    const { attempts } = await kubelet.unpublish(volume, { maxAttempts: 10, maxDelayMs: 100 });
    assert.equal(attempts, 3);
    assert.equal(existsSync(join(volume.targetPath, "..")), false);
    assert.equal(kubelet.publishedVolumes.length, 0);
  });
});
