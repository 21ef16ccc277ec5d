import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ConfigError, loadConfig } from "../../src/config/config.js";
import { seLinuxContextSchema, seLinuxEnabled } from "../../src/config/selinux-context.js";
import { parsePublishRequest } from "../../src/csi/publish-request.js";
import { DriverError } from "../../src/errors.js";
import { tmpfsMountOptions } from "../../src/files/target-mount.js";
import { NodePublishVolumeRequestSchema, VolumeCapability_AccessMode_Mode as Mode } from "../../src/gen/csi/v1/csi_pb.js";

const containerFile = "system_u:object_r:container_file_t:s0";
const podLabel = "system_u:object_r:container_file_t:s0:c12,c345";

test("tmpfs options: the default context, quoted; kubelet's context wins; none without SELinux", () => {
  const withSeLinux = { kind: "tmpfs" as const, size: "4m", seLinuxContext: containerFile };
  assert.deepEqual(tmpfsMountOptions(withSeLinux, 0o755, undefined, undefined), ["size=4m", "mode=755", "nosuid", "nodev", "noexec", `context="${containerFile}"`]);
  assert.deepEqual(tmpfsMountOptions(withSeLinux, 0o750, 1000, podLabel), ["size=4m", "mode=750", "nosuid", "nodev", "noexec", "gid=1000", `context="${podLabel}"`]);
  // --selinux-context none, or a node without SELinux: no context= at all, even when kubelet sends one.
  const without = { kind: "tmpfs" as const, size: "4m", seLinuxContext: undefined };
  assert.ok(!tmpfsMountOptions(without, 0o755, undefined, podLabel).some((option) => option.startsWith("context=")));
});

test("SELinux contexts: levels with categories and ranges pass; anything that could break a mount line does not", () => {
  for (const good of [containerFile, podLabel, "system_u:object_r:container_file_t:s0-s0:c0.c1023", "user_u:role_r:type_t"]) {
    assert.ok(seLinuxContextSchema.safeParse(good).success, good);
  }
  for (const bad of ["", "container_file_t", 'system_u:object_r:x_t:s0" nosuid', "system_u:object_r:x_t:s0 ", "a:b:c:s0,context=x", "a:b:c:s0=x"]) {
    assert.ok(!seLinuxContextSchema.safeParse(bad).success, bad);
  }
});

test("--selinux-context: the container file type by default, none disables, a bad value names the option", () => {
  assert.equal(loadConfig([], {}).seLinuxContext, containerFile);
  assert.equal(loadConfig(["--selinux-context", "none"], {}).seLinuxContext, undefined);
  assert.equal(loadConfig([], { SPIRE_CSI_SELINUX_CONTEXT: podLabel }).seLinuxContext, podLabel);
  assert.throws(() => loadConfig(["--selinux-context", "container_file_t"], {}), (error: unknown) => error instanceof ConfigError && /--selinux-context/.test(error.message));
});

test("SELinux counts as enabled only when the kernel registered selinuxfs", async () => {
  const dir = await mkdtemp(join(tmpdir(), "selinux-"));
  try {
    const file = join(dir, "filesystems");
    await writeFile(file, "nodev\tsysfs\nnodev\ttmpfs\n\text4\n");
    assert.equal(await seLinuxEnabled(file), false);
    await writeFile(file, "nodev\tsysfs\nnodev\tselinuxfs\nnodev\ttmpfs\n");
    assert.equal(await seLinuxEnabled(file), true);
    assert.equal(await seLinuxEnabled(join(dir, "missing")), false);
  } finally {
    await rm(dir, { recursive: true });
  }
});

test("kubelet's context= mount flag (quoted, as kubelet writes it) reaches the volume spec; a bad one is INVALID_ARGUMENT", () => {
  const uid = "0b7c5a8e-1111-4222-8333-444455556666";
  const request = (mountFlags: string[]) =>
    create(NodePublishVolumeRequestSchema, {
      volumeId: "csi-0123",
      targetPath: `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount`,
      readonly: true,
      volumeCapability: { accessType: { case: "mount", value: { fsType: "", mountFlags, volumeMountGroup: "" } }, accessMode: { mode: Mode.SINGLE_NODE_WRITER } },
      volumeContext: {
        "csi.storage.k8s.io/pod.name": "web-0",
        "csi.storage.k8s.io/pod.namespace": "shop",
        "csi.storage.k8s.io/pod.uid": uid,
        "csi.storage.k8s.io/serviceAccount.name": "web",
        "csi.storage.k8s.io/ephemeral": "true",
      },
    });
  assert.equal(parsePublishRequest(request([`context="${podLabel}"`]), "/var/lib/kubelet").seLinuxContext, podLabel);
  assert.equal(parsePublishRequest(request([`context=${containerFile}`]), "/var/lib/kubelet").seLinuxContext, containerFile);
  assert.equal(parsePublishRequest(request([]), "/var/lib/kubelet").seLinuxContext, undefined);
  for (const flags of [['context="a:b:c:s0" ,nosuid'], ["context=a:b:c:s0", "context=a:b:d:s0"]]) {
    assert.throws(
      () => parsePublishRequest(request(flags), "/var/lib/kubelet"),
      (error: unknown) => error instanceof DriverError && error.code === "invalid-argument" && /mount_flags/.test(error.message),
      JSON.stringify(flags),
    );
  }
});
