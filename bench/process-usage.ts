import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
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

/** RSS after letting the process settle, so a just-finished burst's garbage is not counted as resident cost. */
export async function settledResidentBytes(pid: number, settleMs: number): Promise<number> {
  await sleep(settleMs);
  return residentBytes(pid);
}
