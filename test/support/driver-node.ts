import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { DriverProcess, type DriverProcessOptions } from "./driver-process.js";
import { KubeletSimulator } from "./kubelet-sim.js";

/** One simulated node: a kubelet root, the real driver process, and a registered kubelet. */
export interface DriverNode {
  dir: string;
  driver: DriverProcess;
  kubelet: KubeletSimulator;
  kubeletRoot: string;
  metadataDir: string;
  /** Unpublishes what kubelet still holds, stops the driver, unmounts leftovers, removes the dir. */
  close(): Promise<void>;
}

/** The tmpfs mounts below a dir, from this process's mount table. */
export async function mountsUnder(root: string): Promise<string[]> {
  return (await readFile("/proc/self/mountinfo", "utf8"))
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((path) => path.startsWith(root));
}

/**
 * Starts a node in a fresh short temp dir (unix socket paths are limited to 107 bytes) against
 * the agent admin socket given. `close` always cleans up, even after a failed test.
 */
export async function startDriverNode(agentSocket: string, options: Partial<DriverProcessOptions> = {}, prefix = "/tmp/scsi-"): Promise<DriverNode> {
  const dir = await mkdtemp(prefix);
  const kubeletRoot = join(dir, "kubelet");
  const metadataDir = join(dir, "meta");
  await mkdir(kubeletRoot);
  await mkdir(join(dir, "tmp"));
  let driver: DriverProcess | undefined;
  let kubelet: KubeletSimulator | undefined;
  const close = async () => {
    await kubelet?.unpublishAll().catch(() => undefined);
    try {
      await driver?.dispose();
    } finally {
      for (const path of (await mountsUnder(kubeletRoot)).reverse()) {
        try {
          execFileSync("umount", [path]);
        } catch {
          // Already gone.
        }
      }
      await rm(dir, { recursive: true, force: true });
    }
  };
  try {
    driver = await DriverProcess.start({
      pluginSocket: join(dir, "csi.sock"),
      agentSocket,
      kubeletRoot,
      metadataDir,
      logFile: join(dir, "driver.log"),
      tmpDir: join(dir, "tmp"),
      ...options,
    });
    kubelet = new KubeletSimulator({ pluginSocket: join(dir, "csi.sock"), kubeletRoot, nodeName: "test-node" });
    await kubelet.register();
  } catch (error) {
    await close();
    throw error;
  }
  return { dir, driver, kubelet, kubeletRoot, metadataDir, close };
}
