import assert from "node:assert/strict";
import { test } from "node:test";
import { checkTargets, renderMarkdown, renderSvg, type BenchResults } from "../../bench/report.js";
import { distribution, percentile } from "../../bench/stats.js";

test("nearest-rank percentiles: p99 of few samples is the worst one", () => {
  const samples = [5, 1, 4, 2, 3];
  assert.equal(percentile([...samples].sort((a, b) => a - b), 0.5), 3);
  assert.deepEqual(distribution(samples), { count: 5, p50: 3, p95: 5, p99: 5, max: 5 });
  assert.deepEqual(distribution(Array.from({ length: 100 }, (_, i) => i + 1)), { count: 100, p50: 50, p95: 95, p99: 99, max: 100 });
  assert.throws(() => distribution([]), /no samples/);
});

const flat = (value: number) => distribution([value]);

interface Overrides {
  driverP50: number;
  rssIdle: number;
  rssAt250: number;
  rotationLast: number;
  churnTail: number;
  leakedStreams: number;
  rssAfterChurn: number;
  podStartCsi: number;
}

const goodRun: Overrides = { driverP50: 11, rssIdle: 55 * 2 ** 20, rssAt250: 85 * 2 ** 20, rotationLast: 90, churnTail: 25, leakedStreams: 0, rssAfterChurn: 63 * 2 ** 20, podStartCsi: 1040 };
const badRun: Overrides = { driverP50: 30, rssIdle: 65 * 2 ** 20, rssAt250: 130 * 2 ** 20, rotationLast: 300, churnTail: 40, leakedStreams: 1, rssAfterChurn: 70 * 2 ** 20, podStartCsi: 1100 };

function results(overrides: Overrides): BenchResults {
  const publish = [1, 110, 250].map((concurrency) => ({
    concurrency,
    driver: flat(overrides.driverP50),
    baseline: flat(10),
    driverWallMs: overrides.driverP50,
    baselineWallMs: 10,
  }));
  const restart = { volumes: 250, socketReadyMs: 300, allRewrittenMs: 900 };
  return {
    startedAt: "2026-11-25T00:00:00.000Z",
    mode: "quick",
    scenarios: ["publish", "memory", "rotation", "restart", "spire-publish", "spiffe-helper", "churn", "pod-start"],
    machine: { node: "v20.20.2", cpus: 2, cpuModel: "test <cpu> & co", platform: "linux-x64" },
    versions: { driver: "0.1.0", spire: "v1.15.3", spiffeHelper: "v0.11.0" },
    fakeAgent: {
      publish,
      publishDirectoryBacking: publish.filter((level) => level.concurrency !== 110),
      footprint: { rssIdleBytes: overrides.rssIdle, rssByVolumes: { 110: 70 * 2 ** 20, 250: overrides.rssAt250 }, marginalBytesPerVolume: (overrides.rssAt250 - overrides.rssIdle) / 250, idleCpuPercent: 0.25, idleCpuWindowMs: 5000, agentDownCpuPercent: 3 },
      rotation: { volumes: 250, driver: flat(overrides.rotationLast), floor: flat(50), driverLastMs: overrides.rotationLast, floorLastMs: 50, driverCpuMsPerVolume: 0.4 },
      rotationReplicas: { volumes: 250, driver: flat(60), floor: flat(50), driverLastMs: 60, floorLastMs: 50, driverCpuMsPerVolume: 0.2 },
      restart,
    },
    spire: {
      publish,
      restart,
      peers: [1, 10, 50].map((workloads) => ({
        workloads,
        helperRssBytes: workloads * 15 * 2 ** 20,
        driverRssBytes: 70 * 2 ** 20,
        driverIdleRssBytes: 65 * 2 ** 20,
        helperRotation: flat(5),
        driverRotation: flat(3),
        agentCost: {
          agentIdleRssBytes: 40 * 2 ** 20,
          withHelpers: { agentRssBytes: 60 * 2 ** 20, agentCpuPercent: 4, deliveryCpuPercent: 3, deliveryRssBytes: workloads * 15 * 2 ** 20 },
          withDriver: { agentRssBytes: 50 * 2 ** 20, agentCpuPercent: 2, deliveryCpuPercent: 1, deliveryRssBytes: 70 * 2 ** 20 },
        },
      })),
      churn: {
        publishesPerSecond: 20,
        seconds: 60,
        publishes: 1200,
        failures: 0,
        publish: distribution(Array.from({ length: 100 }, (_, i) => (i < 98 ? 10 : overrides.churnTail))),
        bareAgent: distribution(Array.from({ length: 100 }, () => 4)),
        before: { agentStreams: 0, records: 0, mounts: 0, timers: 3, rssBytes: 60 * 2 ** 20 },
        after: { agentStreams: overrides.leakedStreams, records: 0, mounts: 0, timers: 3, rssBytes: overrides.rssAfterChurn },
      },
    },
    podStart: {
      oneByOne: 20,
      atOnce: 30,
      csi: { oneByOne: flat(overrides.podStartCsi), atOnce: flat(overrides.podStartCsi) },
      emptyDir: { oneByOne: flat(1000), atOnce: flat(1000) },
    },
  };
}

test("each target is judged on the run's own baseline", () => {
  const good = checkTargets(results(goodRun));
  const bad = checkTargets(results(badRun));
  assert.equal(good.length, bad.length);
  const met = (checks: typeof good, pattern: RegExp) => checks.find((check) => pattern.test(check.target))?.met;
  assert.equal(met(good, /real SPIRE: publish p50, 1 pod ≤ 1\.5×/), true);
  assert.equal(met(bad, /real SPIRE: publish p50, 1 pod ≤ 1\.5×/), false);
  assert.equal(met(good, /real SPIRE: 250 concurrent publishes all done ≤ 2×/), true);
  assert.equal(met(bad, /real SPIRE: 250 concurrent publishes all done ≤ 2×/), false);
  // Issue 14's bounds, not stricter ones: 1.4× at one pod and 1.9× for the burst are met.
  const nearBounds = checkTargets(results({ ...goodRun, driverP50: 14 })).concat(checkTargets(results({ ...goodRun, driverP50: 19 })));
  assert.deepEqual(nearBounds.filter((check) => /real SPIRE: (publish p50, 1 pod|250 concurrent)/.test(check.target)).map((check) => check.met), [true, true, false, true]);
  // Only the one-pod p50 has a target; 110 and 250 at once are judged by the burst's wall time.
  assert.ok(!good.some((check) => /publish p50.*(110|250)/.test(check.target)));
  assert.equal(met(good, /rotation of 250 volumes/), true);
  assert.equal(met(bad, /rotation of 250 volumes/), false);
  assert.equal(met(bad, /no volume later than 250 ms/), false);
  assert.equal(met(good, /RSS ≤ 90 MB/), true);
  assert.equal(met(bad, /RSS ≤ 90 MB/), false);
  assert.equal(met(good, /idle RSS ≤ 60 MB/), true);
  assert.equal(met(bad, /idle RSS ≤ 60 MB/), false);
  assert.equal(met(good, /restart with 250 volumes/), true);
  // 50 × 15 MB against 70 MB is 10.7× less, short of 20×.
  assert.equal(met(good, /20× less memory/), false);
  assert.match(good.find((check) => /20× less memory/.test(check.target))!.measured, /10\.7× less/);
  assert.equal(met(good, /churn .*p99 ≤ 3× p50/), true);
  assert.equal(met(bad, /churn .*p99 ≤ 3× p50/), false);
  assert.equal(met(good, /churn: nothing leaked/), true);
  assert.equal(met(bad, /churn: nothing leaked/), false);
  assert.match(bad.find((check) => /churn: nothing leaked/.test(check.target))!.measured, /agentStreams 0 → 1/);
  assert.equal(met(good, /churn: RSS back within 10 %/), true);
  assert.equal(met(bad, /churn: RSS back within 10 %/), false);
  assert.equal(met(good, /pod start .*one by one/), true);
  assert.equal(met(bad, /pod start .*at once/), false);
});

test("a run of some scenarios judges only what it measured, and says when the real node was skipped", () => {
  const full = results(goodRun);
  const partial: BenchResults = { ...full, scenarios: ["rotation", "pod-start"], fakeAgent: { rotation: full.fakeAgent!.rotation }, spire: undefined, podStart: { notMeasured: "a kube-apiserver is running" }, failures: [{ stage: "real SPIRE scenarios", error: "agent did not start\n  at stack" }] };
  const checks = checkTargets(partial);
  assert.deepEqual(checks.map((check) => check.target), ["rotation of 250 volumes ≤ 2× the plain-fs floor (push → last swap)", "no volume later than 250 ms after the push"]);
  const markdown = renderMarkdown(partial, checks);
  assert.match(markdown, /pod start .* \| not measured: a kube-apiserver is running \| \*\*no\*\* \|/);
  assert.match(markdown, /\| real SPIRE scenarios \| not measured: failed \(agent did not start\) \| \*\*no\*\* \|/);
  assert.ok(!markdown.includes("## Publish latency"));
  assert.ok(markdown.includes("## Rotation fan-out"));
});

test("the markdown report has every section and the SVG escapes text", () => {
  const run = results(goodRun);
  const markdown = renderMarkdown(run, checkTargets(run));
  for (const heading of ["## Targets", "## Publish latency", "### Where publish time goes", "## Rotation fan-out", "## Restart", "## Memory and CPU", "## Churn", "## Side by side with spiffe-helper", "### Agent cost", "## Pod start on the real node"]) {
    assert.ok(markdown.includes(heading), heading);
  }
  assert.match(markdown, /0\.40 ms with an SVID per pod, 0\.20 ms as replicas \(1\.20× the floor\)/);
  assert.match(markdown, /agent stopped .*: 3\.00 % = 12\.00× idle/, "the agent-down CPU as a ratio of the idle CPU of the same run");
  const silent = results(goodRun);
  silent.fakeAgent!.footprint!.idleCpuPercent = 0;
  const silentMarkdown = renderMarkdown(silent, checkTargets(silent));
  assert.match(silentMarkdown, /agent stopped .*: 3\.00 % \(idle rounds to zero, so no ratio\)/);
  assert.ok(!silentMarkdown.includes("Infinity"));
  assert.match(markdown, /\| 50 \| 750\.0 MB \| 70\.0 MB \| 10\.7× \| 15\.0 MB \/ 102 KB \|/);
  const svg = renderSvg(run);
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.ok(svg.trimEnd().endsWith("</svg>"));
  assert.equal((svg.match(/<rect /g) ?? []).length, 1 + 6 * 2 + 2 + 3 * 2, "background + one bar per measured value");
  assert.ok(svg.includes("test &lt;cpu&gt; &amp; co"));
});
