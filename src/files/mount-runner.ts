import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeMountField, readMountPoints, resolvedPath } from "./mount-table.js";

/** mount(8)/umount(8) could not do what was asked; the message holds their output. */
export class MountCommandError extends Error {
  override readonly name = "MountCommandError";
}

export interface MountRequest {
  source: string;
  target: string;
  fsType: string;
  options: readonly string[];
}

type Job =
  | { kind: "mount"; request: MountRequest; resolve(): void; reject(error: Error): void }
  | { kind: "umount"; target: string; resolve(): void; reject(error: Error): void };

/** Commands a shell runs at once; one `mount -a` of this many tmpfs mounts takes a few ms. */
const maxBatch = 128;
const batchTimeoutMs = 60_000;

/**
 * One long-lived `/bin/sh` that runs one command line at a time from its stdin and reports its
 * exit status after a per-shell marker line.
 */
class ShellWorker {
  private readonly marker = `__spire_csi_done_${randomBytes(8).toString("hex")}`;
  private readonly child: ChildProcess;
  private output = "";
  private current: { resolve(result: { status: number; output: string }): void; reject(error: Error): void } | undefined;
  private timer: NodeJS.Timeout | undefined;
  dead = false;
  /** Taken by the runner for a whole batch, including the work before and after its command. */
  busy = false;

  constructor() {
    // Its own process group, so a timeout or a dead shell takes any mount(8) it started with it.
    this.child = spawn("/bin/sh", [], {
      stdio: ["pipe", "pipe", "ignore"],
      detached: true,
      env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
    });
    this.child.once("error", (error) => this.fail(new MountCommandError(`cannot run /bin/sh for mount commands: ${error.message}`)));
    this.child.once("exit", (code, signal) => this.fail(new MountCommandError(`the mount shell exited (${signal ?? code})`)));
    const { stdin, stdout } = this.child;
    if (!stdin || !stdout) {
      // spawn failed before setting up the pipes (e.g. EMFILE); its "error" event follows.
      this.dead = true;
      return;
    }
    stdout.setEncoding("utf8");
    stdout.on("data", (chunk: string) => this.onOutput(chunk));
    stdin.on("error", () => undefined);
    this.setRef(false);
  }

  /** Runs `command` (one shell line, its output merged into stdout); resolves with its exit status and output. */
  run(command: string): Promise<{ status: number; output: string }> {
    if (this.dead) return Promise.reject(new MountCommandError("the mount shell is gone"));
    return new Promise((resolve, reject) => {
      this.current = { resolve, reject };
      this.output = "";
      this.setRef(true);
      this.timer = setTimeout(() => this.fail(new MountCommandError(`${command} did not finish within ${batchTimeoutMs / 1000}s`)), batchTimeoutMs);
      this.child.stdin!.write(`${command} 2>&1 </dev/null; status=$?; echo; echo "${this.marker} $status"\n`);
    });
  }

  stop(): void {
    this.child.stdin?.end();
    this.fail(new MountCommandError("the mount runner was closed"));
  }

  private onOutput(chunk: string): void {
    this.output += chunk;
    const match = new RegExp(`\\n${this.marker} (\\d+)\\n$`).exec(this.output);
    if (!match || !this.current) return;
    const current = this.current;
    const output = this.output.slice(0, match.index).trim();
    this.finish();
    current.resolve({ status: Number(match[1]), output });
  }

  private fail(error: Error): void {
    if (!this.dead) this.killGroup();
    this.dead = true;
    const current = this.current;
    this.finish();
    current?.reject(error);
  }

  private killGroup(): void {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }

  private finish(): void {
    clearTimeout(this.timer);
    this.current = undefined;
    this.output = "";
    this.setRef(false);
  }

  /** An idle shell must not keep the driver (or a test) alive. */
  private setRef(active: boolean): void {
    for (const handle of [this.child, this.child.stdin as Socket | null, this.child.stdout as Socket | null]) {
      if (active) handle?.ref?.();
      else handle?.unref?.();
    }
  }
}

/**
 * Runs mount(8) and umount(8) off the event loop, in batches. Node's spawn blocks the event loop
 * until the child has exec'd, several milliseconds per call for a process of the driver's size,
 * and each mount(8) run costs a few more in libmount; a burst of publishes would wait for
 * hundreds of those. Instead a few small long-lived shells take whatever is queued: all pending
 * mounts as one `mount -a` over a generated fstab (250 tmpfs mounts take about 10 ms), all
 * pending unmounts as one `umount`. Each
 * request's outcome is then read from the mount table, so one bad target fails only itself.
 */
export class MountRunner {
  private readonly workers: ShellWorker[] = [];
  private readonly queue: Job[] = [];
  private swept = false;
  private closed = false;

  constructor(private readonly poolSize = 2) {}

  mount(request: MountRequest): Promise<void> {
    if (!this.swept) {
      this.swept = true;
      void sweepStaleFstabDirs();
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: "mount", request, resolve, reject });
      this.dispatch();
    });
  }

  unmount(target: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: "umount", target, resolve, reject });
      this.dispatch();
    });
  }

  /** Stops the shells; queued and later requests are rejected. */
  close(): void {
    this.closed = true;
    for (const worker of this.workers) worker.stop();
    this.workers.length = 0;
    for (const job of this.queue.splice(0)) job.reject(new MountCommandError("the mount runner was closed"));
  }

  private dispatch(): void {
    if (this.closed) {
      for (const job of this.queue.splice(0)) job.reject(new MountCommandError("the mount runner was closed"));
      return;
    }
    for (let index = this.workers.length - 1; index >= 0; index--) {
      if (this.workers[index]!.dead) this.workers.splice(index, 1);
    }
    while (this.queue.length > 0) {
      let worker = this.workers.find((candidate) => !candidate.busy && !candidate.dead);
      if (!worker && this.workers.length < this.poolSize) {
        worker = new ShellWorker();
        this.workers.push(worker);
      }
      if (!worker) return;
      worker.busy = true;
      const kind = this.queue[0]!.kind;
      const batch: Job[] = [];
      for (let index = 0; index < this.queue.length && batch.length < maxBatch; ) {
        if (this.queue[index]!.kind === kind) batch.push(...this.queue.splice(index, 1));
        else index++;
      }
      const taken = worker;
      void this.runBatch(taken, batch).finally(() => {
        taken.busy = false;
        this.dispatch();
      });
    }
  }

  private async runBatch(worker: ShellWorker, batch: Job[]): Promise<void> {
    let result: { status: number | string; output: string };
    try {
      result =
        batch[0]!.kind === "mount"
          ? await mountAll(worker, batch.map((job) => (job as Extract<Job, { kind: "mount" }>).request))
          : await worker.run(["umount", ...batch.map((job) => shellQuote((job as Extract<Job, { kind: "umount" }>).target))].join(" "));
    } catch (error) {
      // The shell (and any mount(8) it ran) is gone; the mount table still tells what was done.
      result = { status: "none", output: (error as Error).message };
    }
    let mounted: Set<string>;
    try {
      mounted = await readMountPoints();
    } catch (error) {
      for (const job of batch) job.reject(new MountCommandError(`cannot read the mount table: ${(error as Error).message}`));
      return;
    }
    await Promise.all(
      batch.map(async (job) => {
        const target = job.kind === "mount" ? job.request.target : job.target;
        const resolved = (await resolvedPath(target)) ?? target;
        if (mounted.has(resolved) === (job.kind === "mount")) {
          job.resolve();
          return;
        }
        const related = result.output
          .split("\n")
          .filter((line) => line.includes(target))
          .join("; ");
        const what = job.kind === "mount" ? `mounting ${job.request.fsType} on ${target}` : `unmounting ${target}`;
        job.reject(new MountCommandError(`${what} failed (exit ${result.status})${related || result.output ? `: ${related || result.output}` : ""}`));
      }),
    );
  }
}

const fstabDirPrefix = "spire-csi-fstab-";
/** A batch's fstab lives for milliseconds; a dir older than this was left by a killed driver. */
const staleFstabDirMs = 60_000;

/** Removes fstab dirs that killed processes left in the temp dir (best effort). */
async function sweepStaleFstabDirs(): Promise<void> {
  const root = tmpdir();
  for (const name of await readdir(root).catch(() => [])) {
    if (!name.startsWith(fstabDirPrefix)) continue;
    const info = await lstat(join(root, name)).catch(() => undefined);
    if (info?.isDirectory() && Date.now() - info.mtimeMs > staleFstabDirMs) await rm(join(root, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

/** One `mount -a` over an fstab of the requests; libmount wants a regular file, so it goes in a private temp dir. */
async function mountAll(worker: ShellWorker, requests: readonly MountRequest[]): Promise<{ status: number; output: string }> {
  const dir = await mkdtemp(join(tmpdir(), fstabDirPrefix));
  try {
    const fstab = join(dir, "fstab");
    await writeFile(fstab, `${requests.map(fstabLine).join("\n")}\n`, { mode: 0o600 });
    return await worker.run(`mount -a -T ${shellQuote(fstab)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function fstabLine(request: MountRequest): string {
  const options = request.options.length > 0 ? request.options.join(",") : "defaults";
  return [request.source, request.target, request.fsType, options, "0", "0"].map(encodeMountField).join(" ");
}

/** POSIX single quoting: nothing inside is special except the quote itself. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
