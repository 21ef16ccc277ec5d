import assert from "node:assert/strict";
import { mkdir, readdir, symlink } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  NodePublishVolumeRequestSchema,
  VolumeCapability_AccessMode_Mode as Mode,
} from "../../src/gen/csi/v1/csi_pb.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const podUid = "7d0c5a8e-1111-4222-8333-444455556666";

describe("every malformed publish gets INVALID_ARGUMENT naming the field, and writes nothing", () => {
  let fx: DriverFixture;
  let valid: MessageInitShape<typeof NodePublishVolumeRequestSchema>;
  before(async () => {
    fx = await startDriverFixture();
    const target = join(fx.kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", "spiffe", "mount");
    valid = {
      volumeId: "csi-5f0c8f8f1f8b4b7f9c6f7f1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c",
      targetPath: target,
      readonly: true,
      volumeCapability: {
        accessType: { case: "mount", value: { fsType: "", mountFlags: [] } },
        accessMode: { mode: Mode.SINGLE_NODE_WRITER },
      },
      volumeContext: {
        "csi.storage.k8s.io/pod.name": "web-0",
        "csi.storage.k8s.io/pod.namespace": "demo",
        "csi.storage.k8s.io/pod.uid": podUid,
        "csi.storage.k8s.io/serviceAccount.name": "web",
        "csi.storage.k8s.io/ephemeral": "true",
      },
    };
  });
  after(() => fx.close());

  const cases: [string, (r: MessageInitShape<typeof NodePublishVolumeRequestSchema>) => void, RegExp][] = [
    ["empty volume_id", (r) => (r.volumeId = ""), /^volume_id: is required/],
    ["volume_id with a slash", (r) => (r.volumeId = "csi-../../etc"), /^volume_id: must be/],
    ["volume_id ..", (r) => (r.volumeId = ".."), /^volume_id: must be/],
    ["empty target_path", (r) => (r.targetPath = ""), /^target_path: is required/],
    ["relative target_path", (r) => (r.targetPath = "pods/x/mount"), /^target_path: must be an absolute path/],
    ["target_path with ..", (r) => (r.targetPath = `${r.targetPath}/../../../../../../etc`), /^target_path: must be a normalised path/],
    ["target_path outside the kubelet root", (r) => (r.targetPath = "/tmp/evil/mount"), /^target_path: must be .*\/pods\/<pod-uid>\/volumes\/kubernetes\.io~csi\/<volume>\/mount/],
    ["target_path of another pod", (r) => (r.targetPath = r.targetPath!.replace(podUid, "99999999-1111-4222-8333-444455556666")), /^target_path: must lie under/],
    ["staging_target_path set", (r) => (r.stagingTargetPath = "/var/lib/kubelet/plugins/stage"), /^staging_target_path: must be empty/],
    ["no volume_capability", (r) => (r.volumeCapability = undefined), /^volume_capability: is required/],
    ["block volume", (r) => (r.volumeCapability = { accessType: { case: "block", value: {} }, accessMode: { mode: Mode.SINGLE_NODE_WRITER } }), /^volume_capability\.access_type: must be mount/],
    ["fs_type set", (r) => (r.volumeCapability = { accessType: { case: "mount", value: { fsType: "ext4" } }, accessMode: { mode: Mode.SINGLE_NODE_WRITER } }), /^volume_capability\.mount\.fs_type: must be empty/],
    ["multi-node access mode", (r) => (r.volumeCapability = { accessType: { case: "mount", value: {} }, accessMode: { mode: Mode.MULTI_NODE_MULTI_WRITER } }), /^volume_capability\.access_mode: MULTI_NODE_MULTI_WRITER is not supported/],
    ["readonly false", (r) => (r.readonly = false), /^readonly: must be true: set readOnly: true/],
    ["not ephemeral", (r) => delete r.volumeContext!["csi.storage.k8s.io/ephemeral"], /^volume_context\[csi\.storage\.k8s\.io\/ephemeral\]: must be "true"/],
    ["no pod info", (r) => delete r.volumeContext!["csi.storage.k8s.io/pod.namespace"], /^volume_context\[csi\.storage\.k8s\.io\/pod\.namespace\]: is missing: set podInfoOnMount: true/],
    ["no service account", (r) => delete r.volumeContext!["csi.storage.k8s.io/serviceAccount.name"], /serviceAccount\.name\]: is missing/],
    ["bad namespace", (r) => (r.volumeContext!["csi.storage.k8s.io/pod.namespace"] = "Demo Namespace"), /pod\.namespace\]: "Demo Namespace" is not a valid value/],
    ["unknown csi.spire.io attribute (a selector smuggling attempt)", (r) => (r.volumeContext!["csi.spire.io/selectors"] = "k8s:sa:admin"), /^volume_context\[csi\.spire\.io\/selectors\]: unknown attribute; known keys are/],
    ["target parent dir missing", () => undefined, /^target_path: its parent dir .* does not exist/],
    ["unknown layout", (r) => (r.volumeContext!["csi.spire.io/layout"] = "jks"), /^volume_context\[csi\.spire\.io\/layout\]: /],
    ["file name with a slash", (r) => (r.volumeContext!["csi.spire.io/cert-file"] = "../escape.pem"), /^volume_context\[csi\.spire\.io\/cert-file\]: must use only the portable characters/],
    ["file name ..data", (r) => (r.volumeContext!["csi.spire.io/key-file"] = "..data"), /^volume_context\[csi\.spire\.io\/key-file\]: must not start with '\.\.'/],
    ["duplicate file names", (r) => (r.volumeContext!["csi.spire.io/key-file"] = "tls.crt"), /file names must differ/],
    ["fs-group not a number", (r) => (r.volumeContext!["csi.spire.io/fs-group"] = "wheel"), /^volume_context\[csi\.spire\.io\/fs-group\]: must be a decimal group id/],
    ["fs-group 0", (r) => (r.volumeContext!["csi.spire.io/fs-group"] = "0"), /^volume_context\[csi\.spire\.io\/fs-group\]: must not be 0/],
    ["volume_mount_group not numeric", (r) => (r.volumeCapability = { accessType: { case: "mount", value: { volumeMountGroup: "staff" } }, accessMode: { mode: Mode.SINGLE_NODE_WRITER } }), /^volume_capability\.mount\.volume_mount_group: must be a numeric group id/],
  ];

  for (const [name, mutate, message] of cases) {
    test(name, async () => {
      const request = structuredClone(valid);
      mutate(request);
      await assert.rejects(fx.kubelet.node.nodePublishVolume(create(NodePublishVolumeRequestSchema, request)), (error: unknown) => {
        const connectError = ConnectError.from(error);
        assert.equal(connectError.code, Code.InvalidArgument, `${name}: ${connectError.message}`);
        assert.match(connectError.rawMessage, message);
        return true;
      });
      assert.deepEqual((await readdir(fx.metadataDir)).filter((entry) => entry.endsWith(".json")), [], "no record written");
      assert.equal(fx.agent.subscribeCalls, 0, "no stream opened");
    });
  }

  test("a target whose dir is a planted symlink is refused and nothing is written through it", async () => {
    const outside = join(fx.dir, "outside");
    await mkdir(outside);
    const volumeDir = join(fx.kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", "linked");
    await mkdir(volumeDir, { recursive: true });
    await symlink(outside, join(volumeDir, "mount"));
    const request = structuredClone(valid);
    request.targetPath = join(volumeDir, "mount");
    await assert.rejects(fx.kubelet.node.nodePublishVolume(create(NodePublishVolumeRequestSchema, request)), (error: unknown) => {
      const connectError = ConnectError.from(error);
      assert.equal(connectError.code, Code.InvalidArgument);
      assert.match(connectError.rawMessage, /^target_path: the target .* must be a directory, not a symlink/);
      return true;
    });
    assert.deepEqual(await readdir(outside), [], "nothing written through the link");
  });

  test("selectors cannot be smuggled through attributes: the driver derives them from kubelet's pod info keys alone", async () => {
    await fx.agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/web", selectors: [{ type: "k8s", value: "ns:demo" }, { type: "k8s", value: "sa:web" }] });
    // kubelet overwrites a user attribute named exactly like one of its keys (the simulator's own
    // test covers that), so what a pod can get to the driver are lookalike keys next to kubelet's.
    const request = structuredClone(valid);
    request.targetPath = join(fx.kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi", "smuggle", "mount");
    request.volumeContext = {
      "csi.storage.k8s.io/serviceaccount.name": "admin",
      "csi.storage.k8s.io/serviceAccount.Name": "admin",
      "csi.storage.k8s.io/pod.serviceAccount": "admin",
      "csi.storage.k8s.io/namespace": "kube-system",
      "csi.storage.k8s.io/pod.namespace ": "kube-system",
      "k8s:sa": "admin",
      selectors: "k8s:ns:kube-system",
      ...valid.volumeContext,
    };
    await mkdir(join(request.targetPath, ".."), { recursive: true });
    await fx.kubelet.node.nodePublishVolume(create(NodePublishVolumeRequestSchema, request));
    try {
      assert.deepEqual(fx.agent.lastSelectors, [
        { type: "k8s", value: "ns:demo" },
        { type: "k8s", value: "sa:web" },
        { type: "k8s", value: `pod-uid:${podUid}` },
        { type: "k8s", value: "pod-name:web-0" },
        { type: "k8s", value: "node-name:test-node" },
      ]);
    } finally {
      await fx.kubelet.node.nodeUnpublishVolume({ volumeId: request.volumeId, targetPath: request.targetPath });
      fx.agent.removeEntry("web");
    }
  });

  test("a pod spec without csi.readOnly (kubelet sends readonly=false) is refused naming the fix, and kubelet can clean up", async () => {
    const outcome = await fx.kubelet.tryPublish({ uid: podUid, name: "web-0", namespace: "demo", serviceAccount: "web", readOnly: false }, "writable", {}, { maxAttempts: 1 });
    assert.equal(outcome.error?.code, Code.InvalidArgument);
    assert.match(outcome.error?.rawMessage ?? "", /^readonly: must be true: set readOnly: true on the pod's csi volume/);
    assert.equal(outcome.cleanupError, undefined);
    assert.deepEqual(await readdir(join(fx.kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi")).then((names) => names.filter((name) => name === "writable")), []);
  });
});
