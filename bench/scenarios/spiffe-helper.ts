import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { access, chmod, chown, copyFile, mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { DriverNode } from "../../test/support/driver-node.js";
import type { SpireFixture } from "../../test/support/spire-fixture.js";
import { now } from "../clock.js";
import { FileEvents, isSnapshotSwap } from "../file-events.js";
import { RotationClock } from "../rotation-clock.js";
import { cpuPercentOver, residentBytes, settledResidentBytes } from "../process-usage.js";
import { distribution, type Distribution } from "../stats.js";
import { makePods, volumeName } from "../workload.js";

export const spiffeHelperVersion = "v0.11.0";

/** An unprivileged uid for the helpers, so the unix workload attestor gives them an identity of their own. */
const helperUid = 65534;
/** Short-lived SVIDs, so the agent rotates them every few seconds while the bench waits. */
const rotatingSvidTtlSeconds = 20;
/** SPIRE rotates at half the TTL; this leaves room for a rotation that just missed its sync. */
const rotationWaitMs = 4 * rotatingSvidTtlSeconds * 1000;
/** A rotation's writes must land within this after the agent's push to be counted for it. */
const rotationWindowMs = 5_000;
/** How much earlier than the reference subscriber a workload may see the same push. */
const earlyWriteMs = 100;
/** Changes this close together belong to one write of the workload's files. */
const writeBurstMs = 200;
const helperFiles = new Set(["svid.pem", "svid_key.pem", "svid_bundle.pem"]);

export interface PeerComparisonRow {
  workloads: number;
  /** Sum over the N spiffe-helper processes. */
  helperRssBytes: number;
  /** The one driver process serving N volumes. */
  driverRssBytes: number;
  /** The same driver process with no volume, measured just before. */
  driverIdleRssBytes: number;
  /** Agent push (seen by a reference subscriber) → each workload's files on disk. */
  helperRotation: Distribution;
  driverRotation: Distribution;
  /** What the node pays besides: the SPIRE agent serving the N workloads each way, and the CPU of each side, over the same window. */
  agentCost: {
    /** The agent's RSS with neither side running (before the helpers start). */
    agentIdleRssBytes: number;
    withHelpers: SideCost;
    withDriver: SideCost;
  };
}

/** One side's steady state over a window (rotations included): CPU in percent of one core. */
export interface SideCost {
  agentRssBytes: number;
  agentCpuPercent: number;
  /** The N helpers together, or the driver (with its mount shells). */
  deliveryCpuPercent: number;
  deliveryRssBytes: number;
}

export interface PeerComparisonOptions {
  spire: SpireFixture;
  node: DriverNode;
  helperBinary: string;
  workDir: string;
  counts: readonly number[];
  settleMs: number;
  /** How long each side's CPU use is sampled, with the N workloads in place. */
  cpuWindowMs: number;
}

/**
 * spiffe-helper (one process per workload, Workload API) against the driver (one process, one
 * volume per workload) on the same real agent, one side at a time: total memory for N workloads,
 * what the agent itself costs serving each side, and how long after an agent rotation each
 * workload's files change.
 */
export async function compareWithSpiffeHelper(options: PeerComparisonOptions): Promise<PeerComparisonRow[]> {
  const { spire, node } = options;
  // The helpers run unprivileged and must reach the Workload API socket below the fixture's 0700 dir.
  await chmod(spire.dir, 0o755);
  await chmod(dirname(spire.workloadSocket), 0o755);
  const helperSelectors = [`unix:uid:${helperUid}`];
  const driverSelectors = ["k8s:ns:peer", "k8s:sa:peer"];
  for (const [name, selectors] of [["helper", helperSelectors], ["driver", driverSelectors]] as const) {
    const spiffeId = `spiffe://${spire.trustDomain}/peer/${name}`;
    await spire.createEntry({ spiffeId, selectors: [...selectors], x509SvidTtl: rotatingSvidTtlSeconds });
    await spire.waitForEntryOnAgent({ spiffeId, selectors: [...selectors] });
  }
  // The peer cache usually sits below a 0700 home dir the helper uid cannot enter.
  const helperBinary = join(options.workDir, "spiffe-helper");
  await copyFile(options.helperBinary, helperBinary);
  await chmod(helperBinary, 0o755);
  const helperRotations = new RotationClock(spire.adminSocket, helperSelectors);
  const driverRotations = new RotationClock(spire.adminSocket, driverSelectors);
  const rows: PeerComparisonRow[] = [];
  try {
    for (const count of options.counts) {
      const agentPid = spire.agentPid!;
      const agentIdleRssBytes = await residentBytes(agentPid);
      // The helpers alone.
      const helpers = await startHelpers({ ...options, helperBinary }, count);
      let helperSide: { cost: SideCost; rotation: Distribution };
      try {
        const helperPids = helpers.map((helper) => helper.process.pid!);
        await sleep(options.settleMs);
        helperSide = await measureSide(agentPid, helperPids, helpers.map((helper) => ({ dir: helper.certDir, matches: (name: string) => helperFiles.has(name) })), helperRotations, options.cpuWindowMs);
      } finally {
        await Promise.all(helpers.map((helper) => stopProcess(helper.process)));
      }
      // The driver alone, serving the same number of workloads.
      const driverIdleRss = await settledResidentBytes(node.driver.pid!, 0);
      const pods = makePods(count, "peer", "peer");
      try {
        const volumes = await Promise.all(pods.map((pod) => node.kubelet.publish(pod, volumeName)));
        await sleep(options.settleMs);
        const driverSide = await measureSide(agentPid, [node.driver.pid!], volumes.map((volume) => ({ dir: volume.targetPath, matches: isSnapshotSwap })), driverRotations, options.cpuWindowMs);
        rows.push({
          workloads: count,
          helperRssBytes: helperSide.cost.deliveryRssBytes,
          driverRssBytes: driverSide.cost.deliveryRssBytes,
          driverIdleRssBytes: driverIdleRss,
          helperRotation: helperSide.rotation,
          driverRotation: driverSide.rotation,
          agentCost: { agentIdleRssBytes, withHelpers: helperSide.cost, withDriver: driverSide.cost },
        });
      } finally {
        await node.kubelet.unpublishAll();
      }
    }
  } finally {
    helperRotations.close();
    driverRotations.close();
  }
  return rows;
}

/**
 * One side in steady state: RSS of the agent and of the delivering processes (and their
 * children), CPU of both over `cpuWindowMs`, then the next agent rotation → each workload's files.
 */
async function measureSide(
  agentPid: number,
  deliveryPids: readonly number[],
  dirs: readonly { dir: string; matches: (name: string) => boolean }[],
  rotations: RotationClock,
  cpuWindowMs: number,
): Promise<{ cost: SideCost; rotation: Distribution }> {
  const deliveryRssBytes = (await Promise.all(deliveryPids.map((pid) => settledResidentBytes(pid, 0)))).reduce((a, b) => a + b, 0);
  const agentRssBytes = await residentBytes(agentPid);
  const [agentCpuPercent, ...deliveryCpu] = await Promise.all([agentPid, ...deliveryPids].map((pid) => cpuPercentOver(pid, cpuWindowMs)));
  const events = new FileEvents();
  try {
    for (const { dir, matches } of dirs) events.watch(dir, matches);
    const pushedAt = await rotations.next(now(), rotationWaitMs);
    await sleep(rotationWindowMs);
    return {
      cost: { agentRssBytes, agentCpuPercent: agentCpuPercent!, deliveryCpuPercent: deliveryCpu.reduce((a, b) => a + b, 0), deliveryRssBytes },
      rotation: rotationLatencies(events, dirs.map(({ dir }) => dir), pushedAt),
    };
  } finally {
    events.close();
  }
}

/**
 * Per workload: the agent's push → its files written (the end of the first write burst). The push
 * time is what the reference subscriber saw, or the first write if one was observed earlier (the
 * reference, too, is only told by the agent).
 */
function rotationLatencies(events: FileEvents, dirs: readonly string[], pushedAt: number): Distribution {
  const earliestWrite = Math.min(...dirs.map((dir) => events.firstAfter(dir, pushedAt - earlyWriteMs) ?? pushedAt));
  const since = Math.min(pushedAt, earliestWrite);
  const latencies = dirs.map((dir) => {
    const written = events.firstBurstEnd(dir, since, writeBurstMs);
    if (written === undefined || written > since + rotationWindowMs) throw new Error(`${dir} did not change within ${rotationWindowMs} ms of the agent's rotation`);
    return written - since;
  });
  return distribution(latencies);
}

interface Helper {
  process: ChildProcess;
  certDir: string;
  spawnError?: Error;
}

/** Starts `count` spiffe-helper daemons as the helper uid and waits until each has written its SVID. */
async function startHelpers(options: PeerComparisonOptions, count: number): Promise<Helper[]> {
  const helpers: Helper[] = [];
  try {
    for (let index = 0; index < count; index++) {
      const dir = join(options.workDir, `helpers-${count}`, String(index));
      const certDir = join(dir, "certs");
      await mkdir(certDir, { recursive: true });
      await chown(certDir, helperUid, helperUid);
      const config = join(dir, "helper.conf");
      await writeFile(
        config,
        [
          `agent_address = "${options.spire.workloadSocket}"`,
          `cert_dir = "${certDir}"`,
          `daemon_mode = true`,
          `svid_file_name = "svid.pem"`,
          `svid_key_file_name = "svid_key.pem"`,
          `svid_bundle_file_name = "svid_bundle.pem"`,
          "",
        ].join("\n"),
      );
      await chmod(dir, 0o755);
      await chmod(config, 0o644);
      const child = spawn(options.helperBinary, ["-config", config], { uid: helperUid, gid: helperUid, stdio: "ignore" });
      const helper: Helper = { process: child, certDir };
      child.once("error", (error) => (helper.spawnError = error));
      helpers.push(helper);
    }
    const deadline = Date.now() + 60_000;
    for (const helper of helpers) {
      while (!(await exists(join(helper.certDir, "svid.pem")))) {
        if (helper.spawnError) throw new Error(`cannot start spiffe-helper: ${helper.spawnError.message}`);
        if (helper.process.exitCode !== null) throw new Error(`spiffe-helper exited with ${helper.process.exitCode} before writing its SVID`);
        if (Date.now() > deadline) throw new Error(`spiffe-helper wrote no SVID into ${helper.certDir} within 60 s`);
        await sleep(50);
      }
    }
    return helpers;
  } catch (error) {
    await Promise.all(helpers.map((helper) => stopProcess(helper.process)));
    throw error;
  }
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGKILL");
  await exited;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
