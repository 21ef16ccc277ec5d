import { readdir, readFile } from "node:fs/promises";

/** A process's direct children (the driver's mount shells), from /proc. */
export async function childrenOf(pid: number): Promise<number[]> {
  const children: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => "");
    if (Number(stat.split(") ")[1]?.split(" ")[1]) === pid) children.push(Number(entry));
  }
  return children;
}

/** Whether the process exists and is not a zombie. */
export async function alive(pid: number): Promise<boolean> {
  const state = await readFile(`/proc/${pid}/stat`, "utf8").then((text) => text.split(") ")[1]?.[0], () => undefined);
  return state !== undefined && state !== "Z";
}
