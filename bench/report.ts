import type { ChurnResult } from "./scenarios/churn.js";
import type { PodStartResult } from "./scenarios/pod-start.js";
import type { PeerComparisonRow } from "./scenarios/spiffe-helper.js";
import type { PublishLatencyResult } from "./scenarios/publish-latency.js";
import type { RestartResult } from "./scenarios/restart.js";
import type { RotationFanoutResult } from "./scenarios/rotation-fanout.js";
import type { Distribution } from "./stats.js";

export interface Footprint {
  rssIdleBytes: number;
  /** RSS with N volumes published, keyed by N. */
  rssByVolumes: Record<number, number>;
  /** (RSS at the largest N − idle RSS) / N. */
  marginalBytesPerVolume: number;
  idleCpuPercent: number;
  idleCpuWindowMs: number;
  /** The same window with the agent stopped: every volume's stream retrying with backoff. */
  agentDownCpuPercent: number;
}

/** One run's figures; a part is absent when its scenario was not selected (`--scenarios`). */
export interface BenchResults {
  startedAt: string;
  mode: "quick" | "full";
  /** The scenarios this run selected. */
  scenarios: string[];
  /** `node`: the Node release the driver ran on (the image's); `benchNode`: the one running the bench, its clients and baselines. */
  machine: { node: string; driverNodeFlags?: string[]; driverEnv?: Record<string, string>; benchNode?: string; cpus: number; cpuModel: string; platform: string };
  versions: { driver: string; spire: string; spiffeHelper: string };
  fakeAgent?: {
    publish?: PublishLatencyResult[];
    /** The same publishes with `--volume-backing directory`: no tmpfs mount. */
    publishDirectoryBacking?: PublishLatencyResult[];
    footprint?: Footprint;
    rotation?: RotationFanoutResult;
    /** The same push over as many volumes that are the replicas of a few workloads (one SVID per workload). */
    rotationReplicas?: RotationFanoutResult;
    restart?: RestartResult;
  };
  spire?: { publish?: PublishLatencyResult[]; restart?: RestartResult; peers?: PeerComparisonRow[]; churn?: ChurnResult };
  podStart?: PodStartResult;
  /** Stages that threw: their figures are missing, the others' are kept. */
  failures?: { stage: string; error: string }[];
}

export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean;
}

const ms = (value: number) => `${value < 10 ? value.toFixed(2) : value.toFixed(1)} ms`;
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
const kb = (bytes: number) => `${(bytes / 1024).toFixed(0)} KB`;
const times = (value: number) => `${value.toFixed(2)}×`;
const spread = (d: Distribution) => `${ms(d.p50)} / ${ms(d.p95)} / ${ms(d.p99)}`;

function largest(results: readonly PublishLatencyResult[]): PublishLatencyResult {
  return results.reduce((a, b) => (b.concurrency > a.concurrency ? b : a));
}

const mib = 1024 * 1024;

/** The agents whose figures of one kind this run has, labelled. */
function byAgent<T>(spire: T | undefined, fake: T | undefined): [string, T][] {
  return [
    ["real SPIRE", spire],
    ["fake agent", fake],
  ].filter((pair): pair is [string, T] => pair[1] !== undefined);
}

/** Every target of the benchmark issues, judged on this run's figures against this run's baselines; only the parts this run measured. */
export function checkTargets(results: BenchResults): TargetCheck[] {
  const checks: TargetCheck[] = [];
  for (const [agent, publish] of byAgent(results.spire?.publish, results.fakeAgent?.publish)) {
    // Issue 14's targets: the p50 of one pod alone, and a burst of the largest size all done.
    const single = publish.find((level) => level.concurrency === 1);
    if (single) {
      const ratio = single.driver.p50 / single.baseline.p50;
      checks.push({
        target: `${agent}: publish p50, 1 pod ≤ 1.5× bare agent`,
        measured: `${ms(single.driver.p50)} vs ${ms(single.baseline.p50)} = ${times(ratio)}`,
        met: ratio <= 1.5,
      });
    }
    const burst = largest(publish);
    const wallRatio = burst.driverWallMs / burst.baselineWallMs;
    checks.push({
      target: `${agent}: ${burst.concurrency} concurrent publishes all done ≤ 2× bare agent's ${burst.concurrency} first responses`,
      measured: `${ms(burst.driverWallMs)} vs ${ms(burst.baselineWallMs)} = ${times(wallRatio)}`,
      met: wallRatio <= 2,
    });
  }
  const rotation = results.fakeAgent?.rotation;
  if (rotation) {
    const rotationRatio = rotation.driverLastMs / rotation.floorLastMs;
    checks.push({
      target: `rotation of ${rotation.volumes} volumes ≤ 2× the plain-fs floor (push → last swap)`,
      measured: `${ms(rotation.driverLastMs)} vs ${ms(rotation.floorLastMs)} = ${times(rotationRatio)} (driver CPU ${ms(rotation.driverCpuMsPerVolume)} per volume)`,
      met: rotationRatio <= 2,
    });
    checks.push({
      target: "no volume later than 250 ms after the push",
      measured: `slowest ${ms(rotation.driver.max)}`,
      met: rotation.driver.max <= 250,
    });
  }
  for (const [agent, restart] of byAgent(results.spire?.restart, results.fakeAgent?.restart)) {
    checks.push({
      target: `${agent}: restart with ${restart.volumes} volumes, all re-adopted ≤ 2 s`,
      measured: ms(restart.allRewrittenMs),
      met: restart.allRewrittenMs <= 2_000,
    });
  }
  const footprint = results.fakeAgent?.footprint;
  if (footprint) {
    const fullCount = Math.max(...Object.keys(footprint.rssByVolumes).map(Number));
    const fullRss = footprint.rssByVolumes[fullCount]!;
    checks.push({ target: "idle RSS ≤ 60 MB", measured: mb(footprint.rssIdleBytes), met: footprint.rssIdleBytes <= 60 * mib });
    checks.push({ target: `RSS ≤ 90 MB at ${fullCount} volumes`, measured: mb(fullRss), met: fullRss <= 90 * mib });
    checks.push({
      target: "marginal memory ≤ 150 KB per volume",
      measured: kb(footprint.marginalBytesPerVolume),
      met: footprint.marginalBytesPerVolume <= 150 * 1024,
    });
    checks.push({
      target: "idle CPU < 1 % (no polling)",
      measured: `${footprint.idleCpuPercent.toFixed(2)} % over ${(footprint.idleCpuWindowMs / 1000).toFixed(0)} s`,
      met: footprint.idleCpuPercent < 1,
    });
  }
  if (results.spire?.peers?.length) {
    const peers = results.spire.peers.reduce((a, b) => (b.workloads > a.workloads ? b : a));
    const memoryRatio = peers.helperRssBytes / peers.driverRssBytes;
    checks.push({
      target: `≥ 20× less memory than spiffe-helper at N = ${peers.workloads}`,
      measured: `${mb(peers.driverRssBytes)} vs ${mb(peers.helperRssBytes)} = ${memoryRatio.toFixed(1)}× less`,
      met: memoryRatio >= 20,
    });
  }
  const churn = results.spire?.churn;
  if (churn) {
    const tailRatio = churn.publish.p99 / churn.publish.p50;
    checks.push({
      target: `churn (${churn.publishesPerSecond} publishes + unpublishes/s, ${churn.seconds} s): publish p99 ≤ 3× p50, no publish failed`,
      measured: `p50 ${ms(churn.publish.p50)}, p99 ${ms(churn.publish.p99)} = ${times(tailRatio)}; ${churn.failures} of ${churn.publishes + churn.failures} failed (bare agent at the same rate: p50 ${ms(churn.bareAgent.p50)}, p99 ${ms(churn.bareAgent.p99)})`,
      met: tailRatio <= 3 && churn.failures === 0,
    });
    const leaked = (["agentStreams", "records", "mounts", "timers"] as const).map((what) => [what, churn.after[what] - churn.before[what]] as const);
    checks.push({
      target: "churn: nothing leaked (agent streams, records, mounts, driver timers back to where they started)",
      measured: leaked.map(([what, more]) => `${what} ${churn.before[what]} → ${churn.after[what]}`).join(", "),
      met: leaked.every(([, more]) => more <= 0),
    });
    const rssRatio = churn.after.rssBytes / churn.before.rssBytes;
    checks.push({
      target: "churn: RSS back within 10 % of the start",
      measured: `${mb(churn.before.rssBytes)} → ${mb(churn.after.rssBytes)} (${times(rssRatio)})`,
      met: rssRatio <= 1.1,
    });
  }
  const podStart = results.podStart;
  if (podStart && !("notMeasured" in podStart)) {
    for (const [label, key, count] of [["one by one", "oneByOne", podStart.oneByOne], ["at once", "atOnce", podStart.atOnce]] as const) {
      const ratio = podStart.csi[key].p50 / podStart.emptyDir[key].p50;
      checks.push({
        target: `real node: pod start with the volume ≤ 1.05× emptyDir (p50, ${count} ${label})`,
        measured: `${ms(podStart.csi[key].p50)} vs ${ms(podStart.emptyDir[key].p50)} = ${times(ratio)}`,
        met: ratio <= 1.05,
      });
    }
  }
  return checks;
}

export function renderMarkdown(results: BenchResults, checks: readonly TargetCheck[]): string {
  const lines: string[] = [];
  const { machine, versions } = results;
  lines.push(`# spire-csi-driver benchmark (${results.mode})`, "");
  lines.push(
    `${results.startedAt} · ${machine.cpus}× ${machine.cpuModel} · ${machine.platform} · driver on Node ${machine.node} (the image's)${machine.driverNodeFlags ? ` with \`${machine.driverNodeFlags.join(" ")}\`` : ""}${machine.driverEnv ? ` and \`${Object.entries(machine.driverEnv).map(([name, value]) => `${name}=${value}`).join(" ")}\`` : ""}${machine.benchNode ? `, bench and baselines on Node ${machine.benchNode}` : ""} · driver ${versions.driver} (compiled dist/) · SPIRE ${versions.spire} · spiffe-helper ${versions.spiffeHelper}`,
    "",
    `Scenarios: ${results.scenarios.join(", ")}. Every ratio compares figures measured in this run, on this machine.`,
    "",
  );
  lines.push("## Targets", "", "| Target | Measured (driver vs baseline) | Met |", "|---|---|---|");
  for (const check of checks) lines.push(`| ${check.target} | ${check.measured} | ${check.met ? "yes" : "**no**"} |`);
  if (results.podStart && "notMeasured" in results.podStart) lines.push(`| real node: pod start with the volume ≤ 1.05× emptyDir | not measured: ${results.podStart.notMeasured} | **no** |`);
  for (const failure of results.failures ?? []) lines.push(`| ${failure.stage} | not measured: failed (${failure.error.split("\n")[0]}) | **no** |`);
  const publishes = byAgent(results.spire?.publish, results.fakeAgent?.publish);
  if (publishes.length > 0) {
    lines.push("", "## Publish latency: NodePublishVolume → OK with files written, vs. the bare agent's first SVID set", "");
    lines.push("| Agent | Concurrent | Driver p50 / p95 / p99 | Bare agent p50 / p95 / p99 | p50 ratio | Driver all done | Bare agent all done | Ratio |");
    lines.push("|---|---|---|---|---|---|---|---|");
    for (const [agent, publish] of publishes) {
      for (const level of publish) {
        lines.push(
          `| ${agent} | ${level.concurrency} | ${spread(level.driver)} | ${spread(level.baseline)} | ${times(level.driver.p50 / level.baseline.p50)} | ${ms(level.driverWallMs)} | ${ms(level.baselineWallMs)} | ${times(level.driverWallMs / level.baselineWallMs)} |`,
        );
      }
    }
  }
  const directory = results.fakeAgent?.publishDirectoryBacking;
  if (directory && results.fakeAgent?.publish) {
    lines.push("", "### Where publish time goes: tmpfs (default) against `--volume-backing directory` (fake agent)", "");
    lines.push("| Concurrent | tmpfs p50 | directory p50 | tmpfs all done | directory all done | Bare agent all done (directory run) |", "|---|---|---|---|---|---|");
    for (const level of directory) {
      const tmpfs = results.fakeAgent.publish.find((candidate) => candidate.concurrency === level.concurrency);
      if (!tmpfs) continue;
      lines.push(`| ${level.concurrency} | ${ms(tmpfs.driver.p50)} | ${ms(level.driver.p50)} | ${ms(tmpfs.driverWallMs)} | ${ms(level.driverWallMs)} | ${ms(level.baselineWallMs)} |`);
    }
  }
  const rotation = results.fakeAgent?.rotation;
  if (rotation) {
    lines.push("", `## Rotation fan-out: one push re-issues ${rotation.volumes} SVIDs (fake agent)`, "");
    lines.push("| | p50 | p99 | slowest volume | last swap (median of rounds) |", "|---|---|---|---|---|");
    lines.push(`| driver (push → \`..data\` swapped) | ${ms(rotation.driver.p50)} | ${ms(rotation.driver.p99)} | ${ms(rotation.driver.max)} | ${ms(rotation.driverLastMs)} |`);
    lines.push(`| plain fs floor (same snapshots, no driver) | ${ms(rotation.floor.p50)} | ${ms(rotation.floor.p99)} | ${ms(rotation.floor.max)} | ${ms(rotation.floorLastMs)} |`);
    const replicas = results.fakeAgent?.rotationReplicas;
    if (replicas) {
      lines.push(`| driver, ${replicas.volumes} volumes as replicas of a few workloads (one SVID per workload) | ${ms(replicas.driver.p50)} | ${ms(replicas.driver.p99)} | ${ms(replicas.driver.max)} | ${ms(replicas.driverLastMs)} |`);
      lines.push(`| plain fs floor for those | ${ms(replicas.floor.p50)} | ${ms(replicas.floor.p99)} | ${ms(replicas.floor.max)} | ${ms(replicas.floorLastMs)} |`);
    }
    lines.push(
      "",
      `Driver CPU from the push to the last swap, per volume (median of rounds): ${ms(rotation.driverCpuMsPerVolume)} with an SVID per pod${replicas ? `, ${ms(replicas.driverCpuMsPerVolume)} as replicas (${times(replicas.driverLastMs / replicas.floorLastMs)} the floor)` : ""}.`,
    );
  }
  const restarts = byAgent(results.spire?.restart, results.fakeAgent?.restart);
  if (restarts.length > 0) {
    lines.push("", "## Restart: SIGKILL with all volumes published, new process → every volume rewritten from a live stream", "");
    lines.push("| Agent | Volumes | CSI socket ready | All volumes rewritten |", "|---|---|---|---|");
    for (const [agent, restart] of restarts) lines.push(`| ${agent} | ${restart.volumes} | ${ms(restart.socketReadyMs)} | ${ms(restart.allRewrittenMs)} |`);
  }
  const footprint = results.fakeAgent?.footprint;
  if (footprint) {
    lines.push("", "## Memory and CPU (driver process, fake agent)", "");
    lines.push("| Volumes | RSS |", "|---|---|", `| 0 | ${mb(footprint.rssIdleBytes)} |`);
    for (const [count, rss] of Object.entries(footprint.rssByVolumes)) lines.push(`| ${count} | ${mb(rss)} |`);
    lines.push(
      "",
      `Marginal: ${kb(footprint.marginalBytesPerVolume)} per volume. Idle CPU with all volumes published, between rotations: ${footprint.idleCpuPercent.toFixed(2)} % of one core over ${(footprint.idleCpuWindowMs / 1000).toFixed(0)} s. With the agent stopped (every stream resubscribing with backoff), the same window: ${footprint.agentDownCpuPercent.toFixed(2)} %${footprint.idleCpuPercent > 0 ? ` = ${times(footprint.agentDownCpuPercent / footprint.idleCpuPercent)} idle` : " (idle rounds to zero, so no ratio)"}.`,
    );
  }
  const churn = results.spire?.churn;
  if (churn) {
    lines.push("", `## Churn: ${churn.publishesPerSecond} publishes + ${churn.publishesPerSecond} unpublishes per second for ${churn.seconds} s (real SPIRE)`, "");
    lines.push(
      `Publish p50 / p95 / p99 / max: ${spread(churn.publish)} / ${ms(churn.publish.max)} over ${churn.publishes} publishes (${churn.failures} failed); p50 ${times(churn.publish.p50 / churn.bareAgent.p50)} the bare agent's.`,
      `Bare agent at the same rate (subscription → first SVID set, closed then): ${spread(churn.bareAgent)} / ${ms(churn.bareAgent.max)}.`,
      "",
    );
    lines.push("| | agent streams | records | mounts | driver timers | driver RSS |", "|---|---|---|---|---|---|");
    for (const [label, held] of [["before", churn.before], ["after", churn.after]] as const) {
      lines.push(`| ${label} | ${held.agentStreams} | ${held.records} | ${held.mounts} | ${held.timers} | ${mb(held.rssBytes)} |`);
    }
  }
  const peers = results.spire?.peers;
  if (peers) {
    lines.push("", "## Side by side with spiffe-helper (real SPIRE agent; one helper process per workload; one side at a time)", "");
    lines.push(
      "| Workloads | spiffe-helper RSS (sum) | Driver RSS | Memory ratio | Per workload: spiffe-helper / driver (marginal) | spiffe-helper rotation p50 / slowest | Driver rotation p50 / slowest |",
    );
    lines.push("|---|---|---|---|---|---|---|");
    for (const row of peers) {
      const driverMarginal = Math.max(0, row.driverRssBytes - row.driverIdleRssBytes) / row.workloads;
      lines.push(
        `| ${row.workloads} | ${mb(row.helperRssBytes)} | ${mb(row.driverRssBytes)} | ${(row.helperRssBytes / row.driverRssBytes).toFixed(1)}× | ${mb(row.helperRssBytes / row.workloads)} / ${kb(driverMarginal)} | ${ms(row.helperRotation.p50)} / ${ms(row.helperRotation.max)} | ${ms(row.driverRotation.p50)} / ${ms(row.driverRotation.max)} |`,
      );
    }
    lines.push(
      "",
      "Rotation columns: the agent's push, as a reference subscriber (a client of its own on the same agent) was told of it, → each workload's files written. Both sides hear of the push over the same agent, so a side that was told first can write before the reference: 0 ms means no later than that.",
    );
    lines.push("", "### Agent cost: what the node pays for N workloads (SPIRE agent + delivery, CPU in % of one core over the same window, rotations included)", "");
    lines.push("| Workloads | Agent RSS idle | Agent RSS / CPU with spiffe-helper | Agent RSS / CPU with the driver | Helpers CPU | Driver CPU | Node total RSS: helpers / driver | Node total CPU: helpers / driver |");
    lines.push("|---|---|---|---|---|---|---|---|");
    for (const row of peers) {
      const { agentIdleRssBytes, withHelpers, withDriver } = row.agentCost;
      const pct = (value: number) => `${value.toFixed(2)} %`;
      lines.push(
        `| ${row.workloads} | ${mb(agentIdleRssBytes)} | ${mb(withHelpers.agentRssBytes)} / ${pct(withHelpers.agentCpuPercent)} | ${mb(withDriver.agentRssBytes)} / ${pct(withDriver.agentCpuPercent)} | ${pct(withHelpers.deliveryCpuPercent)} | ${pct(withDriver.deliveryCpuPercent)} | ${mb(withHelpers.agentRssBytes + withHelpers.deliveryRssBytes)} / ${mb(withDriver.agentRssBytes + withDriver.deliveryRssBytes)} | ${pct(withHelpers.agentCpuPercent + withHelpers.deliveryCpuPercent)} / ${pct(withDriver.agentCpuPercent + withDriver.deliveryCpuPercent)} |`,
      );
    }
  }
  const podStart = results.podStart;
  if (podStart && !("notMeasured" in podStart)) {
    lines.push("", "## Pod start on the real node: create → Running (kubelet, containerd, the chart's driver, real SPIRE)", "");
    lines.push("| | csi.spire.io p50 / p95 | emptyDir p50 / p95 | ratio (p50) |", "|---|---|---|---|");
    for (const [label, key] of [[`${podStart.oneByOne} one by one`, "oneByOne"], [`${podStart.atOnce} at once`, "atOnce"]] as const) {
      lines.push(`| ${label} | ${ms(podStart.csi[key].p50)} / ${ms(podStart.csi[key].p95)} | ${ms(podStart.emptyDir[key].p50)} / ${ms(podStart.emptyDir[key].p95)} | ${times(podStart.csi[key].p50 / podStart.emptyDir[key].p50)} |`);
    }
  }
  lines.push("");
  return lines.join("\n");
}

interface Bar {
  label: string;
  value: number;
  color: string;
}

interface Panel {
  title: string;
  unit: string;
  groups: { label: string; bars: Bar[] }[];
}

const driverColor = "#2b6cb0";
const baselineColor = "#a0aec0";
const peerColor = "#dd6b20";

/** Horizontal grouped bars, one panel per measure, stacked in one SVG (no dependencies). */
export function renderSvg(results: BenchResults): string {
  const publish = (agent: string, levels: readonly PublishLatencyResult[]) =>
    levels.map((level) => ({
      label: `${agent}, ${level.concurrency} concurrent`,
      bars: [
        { label: "driver p50", value: level.driver.p50, color: driverColor },
        { label: "bare agent p50", value: level.baseline.p50, color: baselineColor },
      ],
    }));
  const rotation = results.fakeAgent?.rotation;
  const panels: Panel[] = [];
  const publishGroups = [...publish("SPIRE", results.spire?.publish ?? []), ...publish("fake", results.fakeAgent?.publish ?? [])];
  if (publishGroups.length > 0) panels.push({ title: "Publish latency p50", unit: "ms", groups: publishGroups });
  if (rotation) {
    panels.push({
      title: `Rotation of ${rotation.volumes} volumes: push → last swap`,
      unit: "ms",
      groups: [
        {
          label: `${rotation.volumes} volumes`,
          bars: [
            { label: "driver", value: rotation.driverLastMs, color: driverColor },
            { label: "plain fs floor", value: rotation.floorLastMs, color: baselineColor },
          ],
        },
      ],
    });
  }
  if (results.spire?.peers) {
    panels.push({
      title: "Memory for N workloads (RSS)",
      unit: "MB",
      groups: results.spire.peers.map((row) => ({
        label: `N = ${row.workloads}`,
        bars: [
          { label: "driver", value: row.driverRssBytes / 1024 / 1024, color: driverColor },
          { label: "spiffe-helper", value: row.helperRssBytes / 1024 / 1024, color: peerColor },
        ],
      })),
    });
  }
  const width = 760;
  const labelWidth = 190;
  const barHeight = 14;
  const plotWidth = width - labelWidth - 150;
  const parts: string[] = [];
  let y = 46;
  parts.push(`<text x="10" y="20" font-size="15" font-weight="bold">spire-csi-driver benchmark (${escapeXml(results.mode)}, ${escapeXml(results.startedAt)})</text>`);
  const { machine } = results;
  parts.push(`<text x="10" y="38" font-size="11">${escapeXml(`${machine.cpus}× ${machine.cpuModel}, Node ${machine.node}, SPIRE ${results.versions.spire}`)}</text>`);
  for (const panel of panels) {
    y += 24;
    parts.push(`<text x="10" y="${y}" font-size="13" font-weight="bold">${escapeXml(panel.title)}</text>`);
    y += 8;
    const max = Math.max(...panel.groups.flatMap((group) => group.bars.map((bar) => bar.value)), 1e-9);
    for (const group of panel.groups) {
      parts.push(`<text x="10" y="${y + barHeight}" font-size="11">${escapeXml(group.label)}</text>`);
      for (const bar of group.bars) {
        const length = Math.max(1, (bar.value / max) * plotWidth);
        parts.push(`<rect x="${labelWidth}" y="${y}" width="${length.toFixed(1)}" height="${barHeight - 2}" fill="${bar.color}"/>`);
        parts.push(
          `<text x="${(labelWidth + length + 4).toFixed(1)}" y="${y + barHeight - 3}" font-size="10">${escapeXml(`${bar.label}: ${bar.value.toFixed(bar.value < 10 ? 2 : 1)} ${panel.unit}`)}</text>`,
        );
        y += barHeight;
      }
      y += 6;
    }
  }
  const height = y + 16;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join("\n")}\n</svg>\n`;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
