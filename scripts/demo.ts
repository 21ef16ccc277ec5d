/**
 * `npm run demo`: the driver (a real child process), a development Delegated Identity agent that
 * issues real X.509-SVIDs from an in-memory CA, and a kubelet simulator publishing one pod's
 * volume into a temp folder. Shows the SPIFFE ID, the files and a rotation, then cleans up.
 */
import { mkdir, mkdtemp, readdir, readlink, rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DriverProcess } from "../test/support/driver-process.js";
import { startFakeAgent } from "../test/support/fake-agent.js";
import { readVolumeIdentity } from "../test/support/identity-files.js";
import { KubeletSimulator } from "../test/support/kubelet-sim.js";

const svidTtlSeconds = 20;
const pod = { uid: "3f1a9c52-6c1e-4d7a-9a55-5b1f0d2e7c11", name: "web-7d4b9", namespace: "demo", serviceAccount: "web" };
const spiffeId = "spiffe://example.org/ns/demo/sa/web";

function say(text: string): void {
  console.log(`demo | ${text}`);
}

async function main(): Promise<void> {
  const dir = await mkdtemp("/tmp/spire-csi-demo-");
  const kubeletRoot = join(dir, "kubelet");
  await mkdir(join(dir, "agent"), { recursive: true });
  await mkdir(kubeletRoot);
  const asRoot = process.getuid?.() === 0;
  say(`working dir ${dir} (volume backing: ${asRoot ? "tmpfs" : "directory, since not running as root"})`);

  const agent = await startFakeAgent({ socketPath: join(dir, "agent", "admin.sock"), svidTtlSeconds, rotateAtHalfLife: true });
  await agent.addEntry({ id: "web", spiffeId, selectors: [{ type: "k8s", value: "ns:demo" }, { type: "k8s", value: "sa:web" }] });
  say(`dev agent up on ${agent.socketPath}; entry ${spiffeId} <- k8s:ns:demo k8s:sa:web`);

  const driver = await DriverProcess.start({
    pluginSocket: join(dir, "csi.sock"),
    agentSocket: agent.socketPath,
    kubeletRoot,
    metadataDir: join(dir, "metadata"),
    nodeId: "demo-node",
    volumeBacking: asRoot ? "tmpfs" : "directory",
    logFile: join(dir, "driver.log"),
  });
  say(`driver up (pid ${driver.pid}) on ${driver.options.pluginSocket}; logs in ${driver.options.logFile}`);

  const kubelet = new KubeletSimulator({ pluginSocket: driver.options.pluginSocket, kubeletRoot, nodeName: "demo-node" });
  const registered = await kubelet.register();
  say(`kubelet registered plugin ${registered.name} on node ${registered.nodeId}`);
  try {
    const started = performance.now();
    const volume = await kubelet.publish(pod, "spiffe");
    say(`NodePublishVolume OK in ${Math.round(performance.now() - started)} ms -> ${volume.targetPath}`);
    const entries = (await readdir(volume.targetPath)).sort();
    for (const name of entries) {
      const link = await readlink(join(volume.targetPath, name)).catch(() => "");
      say(`  ${name}${link ? ` -> ${link}` : ""}`);
    }
    const first = await readVolumeIdentity(volume.targetPath);
    say(`SPIFFE ID ${first.spiffeId}, serial ${first.serialNumber}, valid to ${first.validTo}; key matches cert, chain verifies against ca.crt`);

    say(`the dev agent rotates at half the ${svidTtlSeconds}s TTL, as SPIRE does; waiting for the new SVID...`);
    const deadline = Date.now() + svidTtlSeconds * 1000;
    let rotated = first;
    while (rotated.serialNumber === first.serialNumber && Date.now() < deadline) {
      await sleep(50);
      rotated = await readVolumeIdentity(volume.targetPath);
    }
    if (rotated.serialNumber === first.serialNumber) throw new Error("no rotation reached the files");
    say(`ROTATED: serial ${first.serialNumber} -> ${rotated.serialNumber} (same SPIFFE ID ${rotated.spiffeId}); all files swapped in one rename of ..data`);

    await kubelet.unpublish(volume);
    say(`NodeUnpublishVolume OK; the target is gone`);
  } finally {
    await driver.dispose();
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  }
  say("done");
}

main().catch((error: unknown) => {
  console.error("demo failed:", error);
  process.exit(1);
});
