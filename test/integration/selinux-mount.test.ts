import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "3c1d2e4f-0000-4000-8000-0000000005e1", name: "confined-0", namespace: "shop", serviceAccount: "app" };

async function mountOptionsOf(target: string): Promise<string | undefined> {
  const line = (await readFile("/proc/self/mountinfo", "utf8")).split("\n").find((entry) => entry.split(" ")[4] === target);
  return line?.split(" - ")[1];
}

// This machine's kernel runs no SELinux (no selinuxfs): what is checked here is that the flag is
// accepted and validated and that such a node gets no context= (tmpfs would refuse it). The
// options an SELinux node gets are checked in test/unit/selinux.test.ts.
describe("SELinux mount context (on a node without SELinux)", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs" } });
    await fx.agent.addEntry({ id: "app", spiffeId: "spiffe://example.org/ns/shop/sa/app", selectors: [{ type: "k8s", value: "ns:shop" }] });
  });
  after(() => fx.close());

  test("kubelet's context= flag is accepted and the tmpfs is mounted without it; the driver says why", async () => {
    await fx.driver.waitForLog((line) => line.msg === "SELinux is not enabled on this node: volumes are mounted without context=");
    const request = fx.kubelet.publishRequest(pod, "svid");
    const mount = request.volumeCapability!.accessType as { case: "mount"; value: { mountFlags: string[] } };
    mount.value.mountFlags = ['context="system_u:object_r:container_file_t:s0:c12,c345"'];
    await mkdir(dirname(request.targetPath!), { recursive: true, mode: 0o750 });
    await fx.kubelet.node.nodePublishVolume(request);
    const options = await mountOptionsOf(request.targetPath!);
    assert.match(options ?? "", /^tmpfs tmpfs /, "a tmpfs is mounted");
    assert.doesNotMatch(options ?? "", /context=/);
    await fx.kubelet.node.nodeUnpublishVolume({ volumeId: request.volumeId, targetPath: request.targetPath });
  });

  test("a malformed context= flag is INVALID_ARGUMENT naming mount_flags", async () => {
    const request = fx.kubelet.publishRequest(pod, "bad");
    const mount = request.volumeCapability!.accessType as { case: "mount"; value: { mountFlags: string[] } };
    mount.value.mountFlags = ['context="system_u:object_r:container_file_t:s0",nosuid'];
    await mkdir(dirname(request.targetPath!), { recursive: true, mode: 0o750 });
    await assert.rejects(fx.kubelet.node.nodePublishVolume(request), (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.message, /volume_capability\.mount\.mount_flags/);
      return true;
    });
  });
});
