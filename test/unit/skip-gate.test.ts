import assert from "node:assert/strict";
import { test } from "node:test";
import { csiSanitySkips, skipGateProblems } from "../../scripts/skip-gate.js";

const expected: number = csiSanitySkips.skipped;
const expectedPending: number = csiSanitySkips.pending;
/** How test/e2e/csi-sanity.test.ts relays ginkgo's summary (one line), as TAP prints a test's console.log. */
const sanityLine = (ran: number, skipped: number, pending = expectedPending) =>
  `# csi-sanity v5.6.0: Ran ${ran} of ${ran + skipped + pending} Specs in 4.512 seconds SUCCESS! -- ${ran} Passed | 0 Failed | ${pending} Pending | ${skipped} Skipped`;
const tapSummary = (skipped: number, todo = 0) => [`# tests 40`, `# pass ${40 - skipped - todo}`, `# fail 0`, `# skipped ${skipped}`, `# todo ${todo}`].join("\n");
const specSummary = (skipped: number) => [`ℹ tests 40`, `ℹ pass ${40 - skipped}`, `ℹ fail 0`, `ℹ skipped ${skipped}`, `ℹ todo 0`].join("\n");
const gate = (log: string) => skipGateProblems("machine Node v20", log, { expectCsiSanity: true });

test("a clean run passes: node:test summaries with no skips (TAP and spec reporter) and csi-sanity skipping exactly the expected specs", () => {
  assert.deepEqual(gate([tapSummary(0), sanityLine(30, expected), tapSummary(0)].join("\n")), []);
  assert.deepEqual(gate([specSummary(0), sanityLine(30, expected)].join("\n")), []);
  // ginkgo's own two-line form, should the relay ever print it as is.
  assert.deepEqual(gate([tapSummary(0), `Ran 30 of ${30 + expected + expectedPending} Specs in 4.5 seconds`, `SUCCESS! -- 30 Passed | 0 Failed | ${expectedPending} Pending | ${expected} Skipped`].join("\n")), []);
});

test("one csi-sanity spec skipped beyond the expected ones fails the gate, naming the expected count and why", () => {
  const problems = gate([tapSummary(0), sanityLine(29, expected + 1)].join("\n"));
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, new RegExp(`skipped ${expected + 1} specs .*expected exactly ${expected} skipped and ${expectedPending} pending \\(66 \\[Controller Server\\] specs`));
  assert.equal(gate([tapSummary(0), sanityLine(30, expected - 1)].join("\n")).length, 1, "fewer skips mean the skip list and the count disagree");
  assert.equal(gate([tapSummary(0), sanityLine(30, expected, expectedPending + 1)].join("\n")).length, 1, "one more pending spec is a skip too");
});

test("node:test skips or todos in any summary fail the gate, in either reporter's form", () => {
  assert.equal(gate([tapSummary(0), sanityLine(30, expected), tapSummary(1)].join("\n")).length, 1);
  assert.equal(gate([tapSummary(0, 2), sanityLine(30, expected)].join("\n")).length, 1);
  assert.equal(gate([specSummary(3), sanityLine(30, expected)].join("\n")).length, 1);
});

test("a run that printed no summary is not a pass", () => {
  assert.match(gate(sanityLine(30, expected)).join("\n"), /no test runner summary/);
  assert.match(gate(tapSummary(0)).join("\n"), /no csi-sanity summary/);
  assert.deepEqual(skipGateProblems("unit only", tapSummary(0), { expectCsiSanity: false }), []);
});
