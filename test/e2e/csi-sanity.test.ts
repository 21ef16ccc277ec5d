/**
 * csi-sanity (kubernetes-csi/csi-test) against the real driver process. What does not run, and
 * why, is listed once in scripts/skip-gate.ts (csiSanitySkips); this test and CI's skip gate both
 * fail on any other count.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { csiSanitySkips } from "../../scripts/skip-gate.js";
import { DriverProcess } from "../support/driver-process.js";
import { startFakeAgent, type FakeAgent } from "../support/fake-agent.js";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
export const csiTestVersion = "v5.6.0";

let dir: string;
let agent: FakeAgent;
let driver: DriverProcess;
let csiSanity: string;

before(async () => {
  const { stdout } = await run("bash", [join(repoRoot, "scripts/build-peers.sh"), "csi-sanity"], { timeout: 30 * 60_000 });
  csiSanity = join(stdout.trim().split("\n").pop()!, `csi-sanity-${csiTestVersion}`);
  dir = await mkdtemp("/tmp/sanity-");
  await mkdir(join(dir, "agent"));
  agent = await startFakeAgent({ socketPath: join(dir, "agent", "admin.sock") });
  driver = await DriverProcess.start({
    pluginSocket: join(dir, "csi.sock"),
    agentSocket: agent.socketPath,
    kubeletRoot: join(dir, "kubelet"),
    metadataDir: join(dir, "meta"),
    logFile: join(dir, "driver.log"),
  });
});

after(async () => {
  await driver?.dispose();
  await agent?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("csi-sanity passes with exactly the expected specs skipped (scripts/skip-gate.ts)", { timeout: 5 * 60_000 }, async () => {
  const args = [
    `--csi.endpoint=unix://${join(dir, "csi.sock")}`,
    `--csi.mountdir=${join(dir, "mnt")}`,
    `--csi.stagingdir=${join(dir, "stage")}`,
    `--ginkgo.skip=${csiSanitySkips.ginkgoSkip}`,
    "--ginkgo.no-color",
  ];
  let output: string;
  try {
    const result = await run(csiSanity, args, { timeout: 4 * 60_000, maxBuffer: 32 * 1024 * 1024 });
    output = result.stdout + result.stderr;
  } catch (error) {
    const failed = error as { stdout?: string; stderr?: string };
    assert.fail(`csi-sanity failed:\n${(failed.stdout ?? "").slice(-6000)}\n${failed.stderr ?? ""}`);
  }
  const summary = /Ran (\d+) of (\d+) Specs[\s\S]*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped/.exec(output);
  assert.ok(summary, `no ginkgo summary in:\n${output.slice(-3000)}`);
  const [, ran, , passed, failed, pending, skipped] = summary.map(Number);
  assert.equal(failed, 0);
  assert.deepEqual({ skipped, pending }, { skipped: csiSanitySkips.skipped, pending: csiSanitySkips.pending }, csiSanitySkips.reasons.join("\n"));
  assert.equal(passed, ran);
  assert.ok(passed! >= 10, `only ${passed} specs ran`);
  console.log(`csi-sanity ${csiTestVersion}: ${summary[0].replace(/\s+/g, " ")}`);
});
