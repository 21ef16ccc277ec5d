import { execFileSync } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

/** Resident set size of a process in bytes, from /proc (VmRSS). */
export async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kib === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kib) * 1024;
}

let ticksPerSecond: number | undefined;

function clockTicksPerSecond(): number {
  ticksPerSecond ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  return ticksPerSecond;
}

/** User + system CPU time a process has used so far, in seconds (/proc/<pid>/stat fields 14 and 15). */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond();
}

/** Average CPU use of a process over a window, in percent of one core. */
export async function cpuPercentOver(pid: number, windowMs: number): Promise<number> {
  const before = await cpuSeconds(pid);
  const started = performance.now();
  await sleep(windowMs);
  const used = (await cpuSeconds(pid)) - before;
  return (used / ((performance.now() - started) / 1000)) * 100;
}

/** A process and all its descendants (the driver's mount shells count as the driver's memory). */
async function processTree(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const children = await Promise.all(tasks.map(async (tid) => (await readFile(`/proc/${pid}/task/${tid}/children`, "utf8").catch(() => "")).split(" ").filter(Boolean).map(Number)));
  const descendants = await Promise.all([...new Set(children.flat())].map(processTree));
  return [pid, ...descendants.flat()];
}

/**
 * RSS of a process and its descendants after letting them settle, so a just-finished burst's
 * garbage is not counted as resident cost.
 */
export async function settledResidentBytes(pid: number, settleMs: number): Promise<number> {
  await sleep(settleMs);
  const sizes = await Promise.all((await processTree(pid)).map((member) => residentBytes(member).catch(() => 0)));
  return sizes.reduce((total, size) => total + size, 0);
}
