import { readdir, readFile } from "node:fs/promises";

/** A process's direct children (the driver's mount shells), from /proc. */
export async function childrenOf(pid: number): Promise<number[]> {
  const children: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    if (parentOf(await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "")) === pid) children.push(Number(entry));
  }
  return children;
}

/** Whether the process exists and is not a zombie. */
export async function alive(pid: number): Promise<boolean> {
  const state = await readFile(`/proc/${pid}/stat`, "utf8").then((text) => afterCommand(text)[0], () => undefined);
  return state !== undefined && state !== "Z";
}

/** The processes of `pids` that are still alive. */
export async function aliveOf(pids: number[]): Promise<number[]> {
  const states = await Promise.all(pids.map(alive));
  return pids.filter((_, index) => states[index]);
}

// /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may itself hold ") ", so split after the last ')'.
function afterCommand(stat: string): string {
  return stat.slice(stat.lastIndexOf(")") + 2);
}

function parentOf(stat: string): number | undefined {
  return stat === "" ? undefined : Number(afterCommand(stat).split(" ")[1]);
}
