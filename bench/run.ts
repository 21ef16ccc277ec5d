/**
 * `npm run bench [-- --quick] [-- --scenarios a,b] [-- --out <dir>] [-- --driver-node-flags="--flag …"]`: builds the driver (dist/,
 * as the image runs it) and the peers (SPIRE, spiffe-helper), then measures against the fake
 * agent and a real SPIRE agent. Prints a markdown table and writes bench.md, bench.json and
 * bench.svg to the results dir (default results/, not committed). Scenarios: see `scenarioNames`.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { startDriverNode, type DriverNode } from "../test/support/driver-node.js";
import { imageEnv, imageNodeFlags } from "../test/support/driver-process.js";
import { delegatedIdentityClient, SpireFixture, spireVersion } from "../test/support/spire-fixture.js";
import { options as driverOptions } from "../src/config/config.js";
import { podSelectors } from "../src/volume/selectors.js";
import { FakeAgentProcess } from "./fake-agent-process.js";
import { cpuPercentOver, settledResidentBytes } from "./process-usage.js";
import { checkTargets, renderMarkdown, renderSvg, type BenchResults, type Footprint } from "./report.js";
import { measurePublishLatency } from "./scenarios/publish-latency.js";
import { measureRestart } from "./scenarios/restart.js";
import { measureRotationFanout } from "./scenarios/rotation-fanout.js";
import { compareWithSpiffeHelper, spiffeHelperVersion } from "./scenarios/spiffe-helper.js";
import { measureChurn } from "./scenarios/churn.js";
import { kubeApiserverRunning, measurePodStart } from "./scenarios/pod-start.js";
import { parseScenarios, scenarioNames, type ScenarioName } from "./scenario-selection.js";
import { benchNodeName, makePods, podEntrySelectors, podSpiffeId, volumeName } from "./workload.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));

const { values: flags } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string", default: join(repoRoot, "results") },
    scenarios: { type: "string", default: scenarioNames.join(",") },
    /** Node flags added after the image's (the last of a flag wins), to measure one before changing the Dockerfile. */
    "driver-node-flags": { type: "string", default: "" },
  },
});
const selected = parseScenarios(flags.scenarios);
const driverNodeFlags = flags["driver-node-flags"].split(" ").filter(Boolean);
const runs = (scenario: ScenarioName) => selected.has(scenario);

/** What a run does; --quick trades samples and durations for time, never the scenario sizes or rates. */
const plan = flags.quick
  ? {
      mode: "quick" as const,
      sequentialSamples: 20,
      bursts: 1,
      rotationRounds: 2,
      settleMs: 1_500,
      idleSettleMs: 5_000,
      idleCpuWindowMs: 5_000,
      agentCpuWindowMs: 5_000,
      churn: { publishesPerSecond: 20, seconds: 15 },
      podStart: { oneByOne: 10, atOnce: 30 },
    }
  : {
      mode: "full" as const,
      sequentialSamples: 60,
      bursts: 3,
      rotationRounds: 5,
      settleMs: 3_000,
      idleSettleMs: 10_000,
      idleCpuWindowMs: 15_000,
      agentCpuWindowMs: 15_000,
      churn: { publishesPerSecond: 20, seconds: 60 },
      podStart: { oneByOne: 20, atOnce: 30 },
    };
const concurrencies = [1, 110, 250];
const volumesAtScale = 250;
/** The rotation scenario's second round: 250 volumes as 25 workloads of 10 replicas each. */
const replicatedWorkloads = 25;
const peerCounts = [1, 10, 50, 110];
const trustDomain = "example.org";

const progress = (message: string) => process.stderr.write(`[bench] ${message}\n`);

/**
 * The Node release the image ships (scripts/versions.env, fetched into a cache outside the clone):
 * the driver is measured on it, not on the Node running the bench, since the two differ in memory
 * and speed (an idle driver on Node 20.20 had ~15 MB less RSS than on Node 24).
 */
const imageNode = (() => {
  const path = execFileSync("bash", [join(repoRoot, "scripts/image-node.sh")], { cwd: repoRoot, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim().split("\n").pop()!;
  return { path, version: execFileSync(path, ["--version"], { encoding: "utf8" }).trim() };
})();

/** Production settings (compiled code, the image's node flags, tmpfs per volume, info logs) unless `backing` says otherwise. */
function startBenchNode(agentSocket: string, backing: "tmpfs" | "directory" = "tmpfs"): Promise<DriverNode> {
  // The driver's own resubscribe backoff, not the test harness's faster one: the agent-down CPU
  // figure depends on it.
  const reconnect = { reconnectMin: driverOptions["reconnect-min"].default, reconnectMax: driverOptions["reconnect-max"].default };
  return startDriverNode(agentSocket, { entry: "build", nodeBinary: imageNode.path, nodeFlags: driverNodeFlags, env: imageEnv(), logLevel: "info", volumeBacking: backing, nodeId: benchNodeName, ...reconnect }, "/tmp/scsi-bench-");
}

/** The fake-agent scenarios; undefined when none of them is selected. */
async function benchFakeAgent(): Promise<BenchResults["fakeAgent"]> {
  if (!(["publish", "memory", "rotation", "restart"] as const).some(runs)) return undefined;
  const dir = await mkdtemp("/tmp/scsi-fake-");
  let agent: FakeAgentProcess | undefined;
  let node: DriverNode | undefined;
  const results: NonNullable<BenchResults["fakeAgent"]> = {};
  try {
    agent = await FakeAgentProcess.start({ socketPath: join(dir, "agent.sock"), trustDomain, svidTtlSeconds: 3600 });
    const pods = makePods(volumesAtScale, "bench", "workload");
    await agent.addEntries(pods.map((pod) => ({ id: pod.uid, spiffeId: podSpiffeId(trustDomain, pod), selectors: podEntrySelectors(pod) })));
    node = await startBenchNode(agent.socketPath);
    const pid = node.driver.pid!;
    const rssIdleBytes = runs("memory") ? await settledResidentBytes(pid, plan.settleMs) : undefined;
    const rssByVolumes: Record<number, number> = {};
    if (runs("publish")) {
      progress("fake agent: publish latency at 1, 110, 250 concurrent pods");
      results.publish = await measurePublishLatency({
        node,
        baseline: delegatedIdentityClient(agent.socketPath),
        pods,
        concurrencies,
        sequentialSamples: plan.sequentialSamples,
        bursts: plan.bursts,
        onPublished: async (count) => {
          if (runs("memory")) rssByVolumes[count] = await settledResidentBytes(pid, plan.settleMs);
        },
        keepLastBurst: true,
      });
    } else {
      progress(`fake agent: publishing ${volumesAtScale} volumes`);
      await Promise.all(pods.map((pod) => node!.kubelet.publish(pod, volumeName)));
      if (runs("memory")) rssByVolumes[volumesAtScale] = await settledResidentBytes(pid, plan.settleMs);
    }
    if (rssIdleBytes !== undefined) {
      progress(`fake agent: idle CPU with ${volumesAtScale} volumes over ${plan.idleCpuWindowMs} ms`);
      // V8 runs a few memory-reducing GCs in the seconds after a burst; "idle" starts after them.
      await sleep(plan.idleSettleMs);
      const idleCpuPercent = await cpuPercentOver(pid, plan.idleCpuWindowMs);
      results.footprint = {
        rssIdleBytes,
        rssByVolumes,
        marginalBytesPerVolume: (rssByVolumes[volumesAtScale]! - rssIdleBytes) / volumesAtScale,
        idleCpuPercent,
        idleCpuWindowMs: plan.idleCpuWindowMs,
        agentDownCpuPercent: Number.NaN,
      };
    }
    const targets = node.kubelet.publishedVolumes.map((volume) => volume.targetPath);
    if (runs("rotation")) {
      progress(`fake agent: rotation fan-out over ${targets.length} volumes`);
      results.rotation = await measureRotationFanout(agent, pid, targets, plan.rotationRounds);
    }
    if (runs("restart")) {
      progress(`fake agent: SIGKILL and restart with ${targets.length} volumes`);
      results.restart = await measureRestart(node, targets);
    }
    if (results.footprint) {
      progress(`fake agent: CPU over ${plan.idleCpuWindowMs} ms with the agent down and ${volumesAtScale} volumes resubscribing`);
      await agent.stop();
      results.footprint.agentDownCpuPercent = await cpuPercentOver(node.driver.pid!, plan.idleCpuWindowMs);
      agent = await FakeAgentProcess.start({ socketPath: join(dir, "agent.sock"), trustDomain, svidTtlSeconds: 3600 });
      await agent.addEntries(pods.map((pod) => ({ id: pod.uid, spiffeId: podSpiffeId(trustDomain, pod), selectors: podEntrySelectors(pod) })));
    }
    if (runs("rotation")) {
      // Deployments: the replicas of a workload share its entry, so one push carries the same SVID
      // on each replica's stream.
      await node.kubelet.unpublishAll();
      const replicaPods = makePods(volumesAtScale, "replicas", "workload").map((pod, index) => ({ ...pod, serviceAccount: `workload-${index % replicatedWorkloads}` }));
      await agent.addEntries(
        Array.from({ length: replicatedWorkloads }, (_, index) => ({
          id: `replicated-${index}`,
          spiffeId: `spiffe://${trustDomain}/replicas/workload-${index}`,
          selectors: [
            { type: "k8s", value: "ns:replicas" },
            { type: "k8s", value: `sa:workload-${index}` },
          ],
        })),
      );
      await Promise.all(replicaPods.map((pod) => node!.kubelet.publish(pod, volumeName)));
      const replicaTargets = node.kubelet.publishedVolumes.map((volume) => volume.targetPath);
      progress(`fake agent: rotation fan-out over ${replicaTargets.length} volumes of ${replicatedWorkloads} workloads (one SVID per workload)`);
      results.rotationReplicas = await measureRotationFanout(agent, node.driver.pid!, replicaTargets, plan.rotationRounds);
    }
    await node.close();
    node = undefined;
    if (runs("publish")) {
      progress("fake agent: publish latency with --volume-backing directory (what the tmpfs mount costs)");
      node = await startBenchNode(agent.socketPath, "directory");
      results.publishDirectoryBacking = await measurePublishLatency({
        node,
        baseline: delegatedIdentityClient(agent.socketPath),
        pods,
        concurrencies: [1, volumesAtScale],
        sequentialSamples: plan.sequentialSamples,
        bursts: plan.bursts,
      });
    }
    return results;
  } finally {
    await node?.close();
    await agent?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The real-SPIRE scenarios; undefined when none of them is selected. */
async function benchSpire(helperBinary: string): Promise<BenchResults["spire"]> {
  if (!(["spire-publish", "restart", "spiffe-helper", "churn"] as const).some(runs)) return undefined;
  progress("real SPIRE: starting server and agent");
  const spire = await SpireFixture.start({ trustDomain, agentProfiling: runs("churn") });
  let node: DriverNode | undefined;
  const results: NonNullable<BenchResults["spire"]> = {};
  try {
    await spire.registerDelegate();
    const pods = makePods(volumesAtScale, "bench", "workload");
    if (runs("spire-publish") || runs("restart")) {
      await spire.createEntries(
        pods.map((pod) => ({ spiffeId: podSpiffeId(trustDomain, pod), selectors: podEntrySelectors(pod).map((s) => `${s.type}:${s.value}`) })),
      );
      progress(`real SPIRE: waiting for the agent to hold ${pods.length} SVIDs`);
      for (const pod of pods) {
        const selectors = podSelectors(pod, benchNodeName).map((selector) => `${selector.type}:${selector.value}`);
        await spire.waitForEntryOnAgent({ spiffeId: podSpiffeId(trustDomain, pod), selectors, timeoutMs: 120_000 });
      }
    }
    node = await startBenchNode(spire.adminSocket);
    if (runs("spire-publish")) {
      progress("real SPIRE: publish latency at 1, 110, 250 concurrent pods");
      results.publish = await measurePublishLatency({
        node,
        baseline: spire.client(),
        pods,
        concurrencies,
        sequentialSamples: plan.sequentialSamples,
        bursts: plan.bursts,
        keepLastBurst: true,
      });
    } else if (runs("restart")) {
      await Promise.all(pods.map((pod) => node!.kubelet.publish(pod, volumeName)));
    }
    if (runs("restart")) {
      const targets = node.kubelet.publishedVolumes.map((volume) => volume.targetPath);
      progress(`real SPIRE: SIGKILL and restart with ${targets.length} volumes`);
      results.restart = await measureRestart(node, targets);
    }
    await node.kubelet.unpublishAll();
    if (runs("churn")) {
      // A fresh process, so the churn's RSS starts from an idle driver and not the 250-volume history.
      await node.driver.restart("SIGTERM");
      progress(`real SPIRE: churn, ${plan.churn.publishesPerSecond} publishes + unpublishes per second for ${plan.churn.seconds} s`);
      results.churn = await measureChurn({ spire, node, ...plan.churn, settleMs: plan.idleSettleMs });
    }
    if (runs("spiffe-helper")) {
      // A fresh process, so the memory figures hold the N volumes and not the history before.
      await node.driver.restart("SIGTERM");
      progress(`real SPIRE: side by side with spiffe-helper ${spiffeHelperVersion} for N = ${peerCounts.join(", ")}`);
      results.peers = await compareWithSpiffeHelper({ spire, node, helperBinary, workDir: spire.dir, counts: peerCounts, settleMs: plan.settleMs, cpuWindowMs: plan.agentCpuWindowMs });
    }
    return results;
  } catch (error) {
    process.stderr.write(`${await spire.logTails(10)}\n`);
    throw error;
  } finally {
    await node?.close();
    await spire.stop();
  }
}

/**
 * Pod start on the real node. It takes the node's fixed ports, so it runs only when no other
 * Kubernetes control plane (a CI run of test:node) is up on this machine.
 */
async function benchPodStart(): Promise<BenchResults["podStart"]> {
  if (!runs("pod-start")) return undefined;
  const busy = kubeApiserverRunning();
  if (busy) {
    progress(`pod start: not measured, ${busy}`);
    return { notMeasured: busy };
  }
  progress("real node: bringing up kubelet, containerd, the image and the chart (minutes)");
  return measurePodStart({ oneByOne: plan.podStart.oneByOne, atOnce: plan.podStart.atOnce });
}

async function main(): Promise<void> {
  const startedAt = new Date().toISOString();
  progress("building dist/ (the driver is measured as the image runs it)");
  execFileSync("npm", ["run", "build"], { cwd: repoRoot, stdio: ["ignore", "ignore", "inherit"] });
  progress(`scenarios: ${[...selected].join(", ")}`);
  const spireScenarios = (["spire-publish", "restart", "spiffe-helper", "churn"] as const).filter(runs);
  let helperBinary = "";
  if (spireScenarios.length > 0) {
    progress("building peers (SPIRE, spiffe-helper) into the shared cache");
    const binDir = execFileSync("bash", [join(repoRoot, "scripts/build-peers.sh"), "spire-server", "spire-agent", "spiffe-helper"], {
      cwd: repoRoot,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    })
      .trim()
      .split("\n")
      .pop()!;
    process.env.SPIRE_BIN_DIR = binDir;
    helperBinary = join(binDir, `spiffe-helper-${spiffeHelperVersion}`);
  }
  const packageJson = JSON.parse(await readFile(join(repoRoot, "package.json"), "utf8")) as { version: string };
  // A stage that fails costs only its own figures: the report keeps the others and names it.
  const failures: { stage: string; error: string }[] = [];
  const attempt = async <T>(stage: string, run: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await run();
    } catch (error) {
      const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
      progress(`${stage} failed: ${text}`);
      failures.push({ stage, error: error instanceof Error ? error.message : String(error) });
      return undefined;
    }
  };
  const fakeAgent = await attempt("fake-agent scenarios", benchFakeAgent);
  const spire = await attempt("real SPIRE scenarios", () => benchSpire(helperBinary));
  const podStart = await attempt("pod start on the real node", benchPodStart);
  const results: BenchResults = {
    startedAt,
    mode: plan.mode,
    scenarios: [...selected],
    machine: { node: imageNode.version, driverNodeFlags: [...imageNodeFlags(), ...driverNodeFlags], driverEnv: imageEnv(), benchNode: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model.trim() ?? "unknown", platform: `${process.platform}-${process.arch}` },
    versions: { driver: packageJson.version, spire: spireVersion, spiffeHelper: spiffeHelperVersion },
    fakeAgent,
    spire,
    podStart,
    failures,
  };
  const checks = checkTargets(results);
  const markdown = renderMarkdown(results, checks);
  await mkdir(flags.out, { recursive: true });
  await writeFile(join(flags.out, "bench.json"), `${JSON.stringify({ ...results, targets: checks }, null, 2)}\n`);
  await writeFile(join(flags.out, "bench.md"), markdown);
  await writeFile(join(flags.out, "bench.svg"), renderSvg(results));
  process.stdout.write(markdown);
  progress(`wrote bench.md, bench.json and bench.svg to ${flags.out}`);
  if (failures.length > 0) {
    progress(`${failures.length} stage(s) failed: ${failures.map((failure) => failure.stage).join(", ")}`);
    process.exitCode = 1;
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`[bench] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
