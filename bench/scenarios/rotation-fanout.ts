import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { FakeAgentProcess } from "../fake-agent-process.js";
import { FileEvents, isSnapshotSwap } from "../file-events.js";
import { cpuSeconds } from "../process-usage.js";
import { distribution, median, type Distribution } from "../stats.js";

export interface RotationFanoutResult {
  volumes: number;
  /** Per volume: push → its `..data` swapped, over all rounds. */
  driver: Distribution;
  /** Per volume: start → its snapshot swapped by plain fs calls, over all rounds. */
  floor: Distribution;
  /** Push → last volume swapped, median over the rounds. */
  driverLastMs: number;
  floorLastMs: number;
  /** Driver CPU (user + system) from the push to the last swap, per volume, median over the rounds. */
  driverCpuMsPerVolume: number;
}

/**
 * One fake-agent push re-issues every SVID at once; the driver must swap all snapshots. The
 * floor writes the same files as the same snapshots (dir, files, symlink rename) with plain fs
 * calls on a tmpfs and no driver, i.e. the least any file-based delivery can cost.
 */
export async function measureRotationFanout(agent: FakeAgentProcess, driverPid: number, targets: readonly string[], rounds: number): Promise<RotationFanoutResult> {
  const events = new FileEvents();
  const driverSamples: number[] = [];
  const floorSamples: number[] = [];
  const driverLast: number[] = [];
  const floorLast: number[] = [];
  const cpuPerVolume: number[] = [];
  try {
    for (const target of targets) events.watch(target, isSnapshotSwap);
    for (let round = 0; round < rounds; round++) {
      const cpuBefore = await cpuSeconds(driverPid);
      const pushedAt = await agent.rotate();
      const swapped = await events.waitForAll(targets, pushedAt, 30_000);
      cpuPerVolume.push((((await cpuSeconds(driverPid)) - cpuBefore) * 1000) / targets.length);
      const latencies = swapped.map((time) => time - pushedAt);
      driverSamples.push(...latencies);
      driverLast.push(Math.max(...latencies));

      const floor = await writeSnapshotsWithoutDriver(targets);
      floorSamples.push(...floor);
      floorLast.push(Math.max(...floor));
      // Let the driver's grace-period cleanup of superseded snapshots run outside the next round.
      await sleep(1_000);
    }
  } finally {
    events.close();
  }
  return {
    volumes: targets.length,
    driver: distribution(driverSamples),
    floor: distribution(floorSamples),
    driverLastMs: median(driverLast),
    floorLastMs: median(floorLast),
    driverCpuMsPerVolume: median(cpuPerVolume),
  };
}

/** Copies each target's current snapshot contents, then times writing them all as new snapshots at once. */
async function writeSnapshotsWithoutDriver(targets: readonly string[]): Promise<number[]> {
  const contents = await Promise.all(
    targets.map(async (target) => {
      const dataDir = join(target, "..data");
      const names = await readdir(dataDir);
      return Promise.all(names.map(async (name) => ({ name, content: await readFile(join(dataDir, name), "utf8") })));
    }),
  );
  const root = await mkdtemp("/dev/shm/scsi-floor-");
  try {
    const dirs = contents.map((_, index) => join(root, String(index)));
    await Promise.all(dirs.map((dir) => mkdir(dir)));
    const started = performance.now();
    return await Promise.all(
      dirs.map(async (dir, index) => {
        const snapshot = join(dir, "..snap-next");
        await mkdir(snapshot, { mode: 0o755 });
        for (const file of contents[index]!) await writeFile(join(snapshot, file.name), file.content, { mode: 0o644, flag: "wx" });
        await symlink("..snap-next", join(dir, "..data_tmp"));
        await rename(join(dir, "..data_tmp"), join(dir, "..data"));
        return performance.now() - started;
      }),
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
