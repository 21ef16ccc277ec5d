import assert from "node:assert/strict";
import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { NodePublishVolumeRequestSchema } from "../../src/gen/csi/v1/csi_pb.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const runs = Number(process.env.FUZZ_RUNS ?? (process.env.SOAK ? 5000 : 400));
const podUid = "f022f022-0000-4000-8000-000000000001";
const attributeKeys = [
  "csi.spire.io/layout",
  "csi.spire.io/cert-file",
  "csi.spire.io/key-file",
  "csi.spire.io/bundle-file",
  "csi.spire.io/credential-file",
  "csi.spire.io/federated-bundles",
  "csi.spire.io/spiffe-id",
  "csi.spire.io/svid-hint",
  "csi.spire.io/jwt-audiences",
  "csi.spire.io/envoy-sds",
  "csi.spire.io/envoy-sds-file",
  "csi.spire.io/fs-group",
  "csi.spire.io/selectors",
  "csi.spire.io/",
  "csi.storage.k8s.io/serviceAccount.name",
  "csi.storage.k8s.io/pod.namespace",
  "csi.storage.k8s.io/pod.uid",
  "csi.storage.k8s.io/ephemeral",
];
const nasty = fc.oneof(
  fc.string(),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.constantFrom("..", "../../../../etc/passwd", "/etc/shadow", "a\u0000b", "\uD800", "..data", ".", "tls.crt", "k8s:sa:admin", "spiffe://example.org/admin", "0", "-1", "4294967296", "true"),
  fc.string({ minLength: 5000, maxLength: 70_000 }).map((text) => text.slice(0, 70_000)),
);

describe("hostile requests (property-based)", { timeout: 15 * 60_000 }, () => {
  let fx: DriverFixture;
  let outside: string;
  before(async () => {
    fx = await startDriverFixture({ driver: { publishTimeout: "2s" } });
    outside = join(fx.dir, "outside");
    await mkdir(outside);
    // Matches every pod on this node, so a request that is valid is published (then unpublished).
    await fx.agent.addEntry({ id: "any", spiffeId: "spiffe://example.org/any", selectors: [{ type: "k8s", value: "node-name:test-node" }] });
  });
  after(() => fx.close());

  test(`${runs} mutated NodePublishVolume requests: right codes, field named, no crash, nothing written outside the target`, async () => {
    const volumeDir = join(fx.kubeletRoot, "pods", podUid, "volumes", "kubernetes.io~csi");
    const validTarget = join(volumeDir, "v", "mount");
    const tally = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          volumeId: fc.oneof(fc.constant("csi-0123456789abcdef"), nasty),
          targetPath: fc.oneof(
            fc.constant(validTarget),
            fc.constantFrom(`${validTarget}/../../../../../../outside`, join(fx.dir, "outside", "mount"), `${volumeDir}/v/../v/mount`, `${validTarget}/`, `${volumeDir}//v/mount`),
            nasty,
          ),
          readonly: fc.boolean(),
          block: fc.boolean(),
          mode: fc.integer({ min: 0, max: 8 }),
          fsType: fc.oneof(fc.constant(""), nasty),
          mountGroup: fc.oneof(fc.constant(""), nasty),
          staging: fc.oneof(fc.constant(""), nasty),
          attributes: fc.dictionary(fc.oneof(fc.constantFrom(...attributeKeys), nasty), nasty, { maxKeys: 4 }),
        }),
        async (input) => {
          await mkdir(join(volumeDir, "v"), { recursive: true });
          const request: MessageInitShape<typeof NodePublishVolumeRequestSchema> = {
            volumeId: input.volumeId,
            targetPath: input.targetPath,
            stagingTargetPath: input.staging,
            readonly: input.readonly,
            volumeCapability: {
              accessType: input.block ? { case: "block", value: {} } : { case: "mount", value: { fsType: input.fsType, volumeMountGroup: input.mountGroup } },
              accessMode: { mode: input.mode },
            },
            volumeContext: {
              ...input.attributes,
              "csi.storage.k8s.io/pod.name": "fuzz-0",
              "csi.storage.k8s.io/pod.namespace": "fuzz",
              "csi.storage.k8s.io/pod.uid": podUid,
              "csi.storage.k8s.io/serviceAccount.name": "fuzz",
              "csi.storage.k8s.io/ephemeral": "true",
            },
          };
          let code: Code | "ok" = "ok";
          try {
            await fx.kubelet.node.nodePublishVolume(create(NodePublishVolumeRequestSchema, request));
          } catch (error) {
            const connectError = ConnectError.from(error);
            code = connectError.code;
            assert.ok(
              code === Code.InvalidArgument || code === Code.AlreadyExists || code === Code.ResourceExhausted,
              `unexpected ${Code[code]}: ${connectError.rawMessage}`,
            );
            assert.match(connectError.rawMessage, /^(volume_id|target_path|staging_target_path|volume_capability[\w.]*|readonly|volume_context\[[^\]]*\]|volume \S+ is already published|target_path \S+ already holds)|grpc: received message larger/, "the message names the field");
          }
          tally.set(code === "ok" ? "OK" : Code[code], (tally.get(code === "ok" ? "OK" : Code[code]) ?? 0) + 1);
          if (code === "ok") await fx.kubelet.node.nodeUnpublishVolume({ volumeId: input.volumeId, targetPath: input.targetPath });
          assert.ok(fx.driver.running, "the driver is still running");
          assert.deepEqual(await readdir(outside), [], "nothing written outside the target");
        },
      ),
      { numRuns: runs },
    );
    assert.equal((await fx.kubelet.identity.getPluginInfo({})).name, "csi.spire.io");
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), [], "no records left behind");
    console.log(`hostile-input: ${runs} requests -> ${[...tally].map(([k, v]) => `${k} ${v}`).join(", ")}`);
  });
});
