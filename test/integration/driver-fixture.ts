import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { DriverProcess, type DriverProcessOptions } from "../support/driver-process.js";
import { startFakeAgent, type FakeAgent } from "../support/fake-agent.js";
import { KubeletSimulator } from "../support/kubelet-sim.js";

export interface DriverFixture {
  dir: string;
  agent: FakeAgent;
  driver: DriverProcess;
  kubelet: KubeletSimulator;
  kubeletRoot: string;
  metadataDir: string;
  close(): Promise<void>;
}

/**
 * A fake agent, the real driver process and a kubelet simulator in a fresh temp dir (short path:
 * unix socket paths are limited to 107 bytes). `close` stops everything and removes the dir.
 */
export async function startDriverFixture(
  options: { driver?: Partial<DriverProcessOptions>; trustDomain?: string; withIntermediate?: boolean; jwtTtlSeconds?: number } = {},
): Promise<DriverFixture> {
  const dir = await mkdtemp("/tmp/scsi-");
  const kubeletRoot = join(dir, "kubelet");
  const metadataDir = join(dir, "meta");
  await mkdir(kubeletRoot);
  const agentSocket = join(dir, "agent", "admin.sock");
  await mkdir(join(dir, "agent"));
  const agent = await startFakeAgent({
    socketPath: agentSocket,
    trustDomain: options.trustDomain ?? "example.org",
    withIntermediate: options.withIntermediate,
    jwtTtlSeconds: options.jwtTtlSeconds,
  });
  let driver: DriverProcess | undefined;
  let kubelet: KubeletSimulator | undefined;
  const close = async () => {
    await kubelet?.unpublishAll().catch(() => undefined);
    await driver?.dispose();
    await agent.stop();
    await unmountAll(kubeletRoot);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    driver = await DriverProcess.start({
      pluginSocket: join(dir, "csi.sock"),
      agentSocket,
      kubeletRoot,
      metadataDir,
      logFile: join(dir, "driver.log"),
      ...options.driver,
    });
    kubelet = new KubeletSimulator({ pluginSocket: join(dir, "csi.sock"), kubeletRoot, nodeName: "test-node" });
    await kubelet.register();
  } catch (error) {
    await close();
    throw error;
  }
  return { dir, agent, driver, kubelet, kubeletRoot, metadataDir, close };
}

/** Unmounts any tmpfs a failed test left under the dir, so removing it cannot fail. */
async function unmountAll(root: string): Promise<void> {
  const { readFile } = await import("node:fs/promises");
  const { execFileSync } = await import("node:child_process");
  const mounts = (await readFile("/proc/self/mountinfo", "utf8"))
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((path) => path.startsWith(root));
  for (const path of mounts.reverse()) {
    try {
      execFileSync("umount", [path]);
    } catch {
      // Already gone.
    }
  }
}
