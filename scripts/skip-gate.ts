/**
 * The skip gate of `.ci/run` under CI=true: a run's log passes only if every test runner in it
 * reported and nothing was skipped that is not skipped on purpose. Two runners print summaries:
 * node:test ("# skipped N" in TAP, Node 20 when piped; "ℹ skipped N" from the spec reporter,
 * Node 24 when piped) and csi-sanity's ginkgo ("Ran X of Y Specs … N Skipped", relayed by
 * test/e2e/csi-sanity.test.ts). Usage: `node --import tsx scripts/skip-gate.ts <label> <log file>`;
 * prints each problem and exits 1 if there is any.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * The csi-sanity v5.6.0 specs that do not run, in one place: the e2e test passes `ginkgoSkip` to
 * csi-sanity and the gate accepts exactly `skipped` skipped and `pending` pending, no more, no
 * fewer (a changed count means the plugin or csi-sanity changed: read `reasons` again).
 */
export const csiSanitySkips = {
  ginkgoSkip: "\\[Controller Server\\]|should remove target path",
  skipped: 92,
  pending: 1,
  reasons: [
    "66 [Controller Server] specs, filtered out: a node-only plugin serves no Controller service",
    "1 'should remove target path', filtered out: it calls CreateVolume first and publishes at <mountdir>/target, which is no kubelet path; the driver does remove the target dir at unpublish (test/integration/publish.test.ts)",
    "25 skipped by csi-sanity for capabilities not offered: GroupController 6, NodeStage/NodeUnstage 5, NodeGetVolumeStats 4, NodeExpandVolume 4, volume and storage health 3, node specs that need CreateVolume 2, SINGLE_NODE_MULTI_WRITER 1",
    "1 pending: a [Controller Server] ListVolumes spec csi-test itself marks pending",
  ],
} as const;

const nodeTestPass = /^(?:# |ℹ )pass \d+/m;
const nodeTestSkips = /^(?:# |ℹ )(skipped|todo) (\d+)/gm;
const ginkgoSummary = /Ran (\d+) of (\d+) Specs\b[\s\S]*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped/g;

/** What is wrong with one run's log (empty when it passes the gate). */
export function skipGateProblems(label: string, log: string, options: { expectCsiSanity: boolean }): string[] {
  const problems: string[] = [];
  if (!nodeTestPass.test(log)) problems.push(`no test runner summary from the ${label} runs`);
  for (const [, kind, count] of log.matchAll(nodeTestSkips)) {
    if (Number(count) > 0) problems.push(`${count} tests reported as ${kind} on ${label}; a skip counts as a failure here`);
  }
  const sanityRuns = [...log.matchAll(ginkgoSummary)];
  if (options.expectCsiSanity && sanityRuns.length === 0) problems.push(`no csi-sanity summary ("Ran X of Y Specs") from the ${label} runs`);
  for (const [summary, , , , , pending, skipped] of sanityRuns) {
    if (Number(skipped) !== csiSanitySkips.skipped || Number(pending) !== csiSanitySkips.pending) {
      problems.push(
        `csi-sanity on ${label} skipped ${skipped} specs with ${pending} pending; expected exactly ${csiSanitySkips.skipped} skipped and ${csiSanitySkips.pending} pending (${csiSanitySkips.reasons.join("; ")}): ${summary.replace(/\s+/g, " ")}`,
      );
    }
  }
  return problems;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [label, file] = process.argv.slice(2);
  if (!label || !file) {
    console.error("usage: skip-gate.ts <label> <log file>");
    process.exit(2);
  }
  const problems = skipGateProblems(label, readFileSync(file, "utf8"), { expectCsiSanity: true });
  for (const problem of problems) console.error(`CI: ${problem}`);
  process.exit(problems.length === 0 ? 0 : 1);
}
