import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createLogger } from "../../src/log.js";
import { FanoutLog } from "../../src/volume/fanout-log.js";

function capture(level: string) {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString("utf8").split("\n").filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger(level, stream), lines };
}

/** Waits (without judging how long it took) until `lines` holds a line `matches` accepts. */
async function lineMatching(lines: readonly Record<string, unknown>[], matches: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  for (;;) {
    const line = lines.find(matches);
    if (line) return line;
    await sleep(5);
  }
}

const summary = "identity files of many volumes rewritten together (each volume's line at debug)";

test("a fan-out is one volume's info line, the rest at debug, and one summary; a lone rewrite after it is one info line with its volume", async () => {
  const { logger, lines } = capture("info");
  const fanout = new FanoutLog(logger, 20);
  const volume = (index: number) => logger.child({ volumeId: `vol-${index}` });

  for (let index = 1; index <= 250; index++) {
    const update = index % 50 === 0;
    fanout.rewritten(volume(index), {}, update ? "identity files updated (trust bundles or JWT-SVIDs)" : "identity files rotated", update ? "update" : "rotation");
  }
  const total = await lineMatching(lines, (line) => line.msg === summary);
  assert.deepEqual({ level: total.level, volumes: total.volumes, rotated: total.rotated, updated: total.updated }, { level: "info", volumes: 250, rotated: 245, updated: 5 });
  assert.deepEqual(
    lines.map((line) => [line.msg, line.volumeId]),
    [["identity files rotated", "vol-1"], [summary, undefined]],
  );

  // The summary closed the fan-out: the next rewrite is news of its own.
  fanout.rewritten(volume(0), {}, "identity files rotated", "rotation");
  assert.deepEqual(lines.slice(2).map((line) => [line.level, line.msg, line.volumeId]), [["info", "identity files rotated", "vol-0"]]);
});

test("at debug level every volume's rewrite is still logged", async () => {
  const { logger, lines } = capture("debug");
  const fanout = new FanoutLog(logger, 20);
  for (let index = 0; index < 3; index++) fanout.rewritten(logger.child({ volumeId: `vol-${index}` }), {}, "identity files rotated", "rotation");
  await lineMatching(lines, (line) => line.msg === summary);
  assert.deepEqual(lines.filter((line) => line.msg === "identity files rotated").map((line) => [line.level, line.volumeId]), [["info", "vol-0"], ["debug", "vol-1"], ["debug", "vol-2"]]);
});
