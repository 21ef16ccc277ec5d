import assert from "node:assert/strict";
import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { NodePublishVolumeRequestSchema } from "../../src/gen/csi/v1/csi_pb.js";
import { isMountPoint } from "../../src/files/mount-table.js";
import { mountsUnder } from "../support/driver-node.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const runs = Number(process.env.FUZZ_RUNS ?? (process.env.SOAK ? 5000 : 400));
const nameRuns = Number(process.env.FUZZ_NAME_RUNS ?? (process.env.SOAK ? 1000 : 100));
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

  test(`${nameRuns} hostile volume names in kubelet's target layout reach the tmpfs mount and leave nothing behind`, async () => {
    // The API server allows only DNS labels as volume names, but the driver must not depend on
    // it: names with fstab separators, octal escapes, shell and mount-option syntax are mounted
    // exactly where kubelet asked (or refused naming target_path), and unmounted again.
    const hostileName = fc
      .oneof(
        fc.constantFrom("a b", "a\tb", "tab\there", "new\nline", "back\\slash", "\\040", "#comment", "a,b", "rw,suid", "x=y", "defaults", "'quote", '"dq"', "$(id)", "`id`", ";true", "*", "-o", "é-ünïcode", "a".repeat(200)),
        fc.string({ unit: "binary", minLength: 1, maxLength: 60 }),
        fc.string({ unit: fc.constantFrom(" ", "\t", "\n", "\\", "#", ",", "=", "0", "4"), minLength: 1, maxLength: 12 }),
      )
      .filter((name) => !name.includes("/") && !name.includes("\0") && name !== "." && name !== ".." && Buffer.byteLength(name) <= 200);
    const tally = { mounted: 0, refused: 0 };
    let podIndex = 0;
    await fc.assert(
      fc.asyncProperty(hostileName, async (name) => {
        const pod = { uid: `f022f022-0000-4000-8000-${String(++podIndex).padStart(12, "0")}`, name: "fuzz-0", namespace: "fuzz", serviceAccount: "fuzz" };
        const outcome = await fx.kubelet.tryPublish(pod, name, {}, { maxAttempts: 1 });
        if (outcome.error) {
          tally.refused += 1;
          assert.equal(outcome.error.code, Code.InvalidArgument, outcome.error.rawMessage);
          assert.match(outcome.error.rawMessage, /^target_path: /);
        } else {
          tally.mounted += 1;
          assert.ok(await isMountPoint(outcome.targetPath), `${JSON.stringify(name)}: the target itself is the mount point`);
          assert.equal((await readVolumeIdentity(outcome.targetPath)).spiffeId, "spiffe://example.org/any");
          await fx.kubelet.unpublish(outcome);
        }
        assert.deepEqual(await mountsUnder(fx.kubeletRoot), [], `${JSON.stringify(name)}: no mount left`);
        assert.deepEqual(await readdir(outside), [], "nothing written outside the target");
      }),
      { numRuns: nameRuns },
    );
    assert.deepEqual((await readdir(fx.metadataDir)).filter((entry) => entry.endsWith(".json")), [], "no records left behind");
    console.log(`hostile-input: ${nameRuns} hostile volume names -> mounted ${tally.mounted}, refused ${tally.refused}`);
  });
});
