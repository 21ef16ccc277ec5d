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

/** mount(8)/umount(8) did not finish within the operation's deadline; the shell running it was killed. */
export class MountTimeoutError extends MountCommandError {}

export interface MountRequest {
  source: string;
  target: string;
  fsType: string;
  options: readonly string[];
}

export interface MountRunnerOptions {
  /** Shells kept for batching; a normal batch takes milliseconds, so two serve any burst. */
  poolSize?: number;
  /**
   * Upper bound on shells. A shell busy for longer than `stuckAfterMs` no longer counts against
   * `poolSize`: another one is started beside it, so one hung mount(8) (a wedged device, a
   * blocked mount namespace) never holds up other volumes' mounts and unmounts.
   */
  maxShells?: number;
  /** Deadline of an operation whose caller gives none. */
  timeoutMs?: number;
  /** The mount(8) and umount(8) to run; tests put a command that hangs here. */
  commands?: { mount: string; umount: string };
}

type JobBase = {
  /** performance.now() by which the job must be settled; the shell running it is killed then. */
  deadline: number;
  timeoutMs: number;
  /** Set when the job was in a batch that hit a deadline: it then runs alone, never batched again. */
  suspect: boolean;
  resolve(): void;
  reject(error: Error): void;
};
type Job = ({ kind: "mount"; request: MountRequest } | { kind: "umount"; target: string }) & JobBase;

/** Commands a shell runs at once; one `mount -a` of this many tmpfs mounts takes a few ms. */
const maxBatch = 128;
const defaultTimeoutMs = 60_000;
/** A batch of tmpfs mounts takes milliseconds; a shell busy this long is treated as stuck. */
const stuckAfterMs = 500;

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
  /** performance.now() when the current batch was taken. */
  busySince = 0;

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
  run(command: string, timeoutMs: number): Promise<{ status: number; output: string }> {
    if (this.dead) return Promise.reject(new MountCommandError("the mount shell is gone"));
    return new Promise((resolve, reject) => {
      this.current = { resolve, reject };
      this.output = "";
      this.setRef(true);
      this.timer = setTimeout(() => this.fail(new MountTimeoutError(`did not finish within ${seconds(timeoutMs)}s; killed`)), timeoutMs);
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
 *
 * Every request has a deadline. One still queued at its deadline is rejected; one in a running
 * batch at its deadline has that batch's shell (and the mount(8) it runs) killed, and the outcome
 * of each request of the batch is read from the mount table: done ones resolve, the ones past
 * their deadline reject with MountTimeoutError, the rest are queued again to run alone, so a hung
 * target can delay an innocent neighbour once but never make it fail before its own deadline.
 *
 * Why processes and not mount(2)/umount2(2) called through an FFI: koffi 3.3.4's async calls
 * (tried for issue 14) were faster for one pod, not for 250 (README, Performance), and they run
 * on libuv's thread pool, four threads that every fs.promises call of the driver shares. A
 * thread stuck in mount(2) can be neither killed nor given back; with four stuck, a record write
 * or a mount-table read waits as long as they do (four calls blocked for 3 s held an fs.promises
 * readFile for 3001 ms, three for 2 ms), so a few wedged targets would stop every publish and
 * unpublish on the node. A stuck mount(8) is a process of its own: its group is killed at the
 * deadline and the driver's threads never wait for it. koffi also throws once 256 async calls
 * are queued, fewer than a 300-pod burst makes.
 */
export class MountRunner {
  private readonly workers: ShellWorker[] = [];
  private readonly queue: Job[] = [];
  private readonly poolSize: number;
  private readonly maxShells: number;
  private readonly timeoutMs: number;
  private readonly commands: { mount: string; umount: string };
  private redispatch: NodeJS.Timeout | undefined;
  private swept = false;
  private closed = false;

  constructor(options: MountRunnerOptions = {}) {
    this.poolSize = options.poolSize ?? 2;
    this.maxShells = Math.max(this.poolSize, options.maxShells ?? 8);
    this.timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
    this.commands = options.commands ?? { mount: "mount", umount: "umount" };
  }

  /** Mounts, rejecting with MountTimeoutError if it is not done within `timeoutMs`. */
  mount(request: MountRequest, timeoutMs = this.timeoutMs): Promise<void> {
    if (!this.swept) {
      this.swept = true;
      void sweepStaleFstabDirs();
    }
    return this.enqueue({ kind: "mount", request }, timeoutMs);
  }

  /** Unmounts, rejecting with MountTimeoutError if it is not done within `timeoutMs`. */
  unmount(target: string, timeoutMs = this.timeoutMs): Promise<void> {
    return this.enqueue({ kind: "umount", target }, timeoutMs);
  }

  /** Stops the shells; queued and later requests are rejected. */
  close(): void {
    this.closed = true;
    clearTimeout(this.redispatch);
    for (const worker of this.workers) worker.stop();
    this.workers.length = 0;
    for (const job of this.queue.splice(0)) job.reject(new MountCommandError("the mount runner was closed"));
  }

  private enqueue(what: { kind: "mount"; request: MountRequest } | { kind: "umount"; target: string }, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const expiry = setTimeout(() => {
        const index = this.queue.indexOf(job);
        if (index < 0) return; // In a running batch: that batch's own timer kills it.
        this.queue.splice(index, 1);
        job.reject(new MountTimeoutError(`${describe(job)} did not start within ${seconds(timeoutMs)}s: every mount shell was busy`));
      }, timeoutMs);
      const job: Job = {
        ...what,
        deadline: performance.now() + timeoutMs,
        timeoutMs,
        suspect: false,
        resolve: () => {
          clearTimeout(expiry);
          resolve();
        },
        reject: (error) => {
          clearTimeout(expiry);
          reject(error);
        },
      };
      this.queue.push(job);
      this.dispatch();
    });
  }

  private dispatch(): void {
    if (this.closed) {
      for (const job of this.queue.splice(0)) job.reject(new MountCommandError("the mount runner was closed"));
      return;
    }
    clearTimeout(this.redispatch);
    this.redispatch = undefined;
    for (let index = this.workers.length - 1; index >= 0; index--) {
      if (this.workers[index]!.dead) this.workers.splice(index, 1);
    }
    while (this.queue.length > 0) {
      const worker = this.freeWorker();
      if (!worker) {
        this.dispatchWhenStuck();
        return;
      }
      worker.busy = true;
      worker.busySince = performance.now();
      const batch = this.takeBatch();
      void this.runBatch(worker, batch).finally(() => {
        worker.busy = false;
        this.dispatch();
      });
    }
  }

  /** An idle shell, or a new one while fewer than `poolSize` shells are busy without being stuck. */
  private freeWorker(): ShellWorker | undefined {
    const idle = this.workers.find((candidate) => !candidate.busy && !candidate.dead);
    if (idle) return idle;
    const working = this.workers.filter((worker) => !this.isStuck(worker)).length;
    if (working >= this.poolSize || this.workers.length >= this.maxShells) return undefined;
    const worker = new ShellWorker();
    this.workers.push(worker);
    return worker;
  }

  private isStuck(worker: ShellWorker): boolean {
    return worker.busy && performance.now() - worker.busySince >= stuckAfterMs;
  }

  /** Jobs wait for a busy shell; if it turns out stuck, look again then (a finished batch dispatches anyway). */
  private dispatchWhenStuck(): void {
    const working = this.workers.filter((worker) => !this.isStuck(worker));
    if (this.workers.length >= this.maxShells || working.length === 0) return;
    const earliest = Math.min(...working.map((worker) => worker.busySince));
    const wait = Math.max(0, earliest + stuckAfterMs - performance.now()) + 1;
    this.redispatch = setTimeout(() => this.dispatch(), wait);
    this.redispatch.unref();
  }

  /** A suspect job alone; otherwise every queued job of the first job's kind, up to maxBatch. */
  private takeBatch(): Job[] {
    const first = this.queue[0]!;
    if (first.suspect) return this.queue.splice(0, 1);
    const batch: Job[] = [];
    for (let index = 0; index < this.queue.length && batch.length < maxBatch; ) {
      const job = this.queue[index]!;
      if (job.kind === first.kind && !job.suspect) batch.push(...this.queue.splice(index, 1));
      else index++;
    }
    return batch;
  }

  private async runBatch(worker: ShellWorker, batch: Job[]): Promise<void> {
    let result: { status: number | string; output: string };
    let timedOut = false;
    const timeoutMs = Math.max(0, Math.min(...batch.map((job) => job.deadline)) - performance.now());
    try {
      result =
        batch[0]!.kind === "mount"
          ? await mountAll(worker, this.commands.mount, batch.map((job) => (job as Extract<Job, { kind: "mount" }>).request), timeoutMs)
          : await worker.run([this.commands.umount, ...batch.map((job) => shellQuote((job as Extract<Job, { kind: "umount" }>).target))].join(" "), timeoutMs);
    } catch (error) {
      // The shell (and any mount(8) it ran) is gone; the mount table still tells what was done.
      timedOut = error instanceof MountTimeoutError;
      result = { status: "none", output: (error as Error).message };
    }
    let mounted: Set<string>;
    try {
      mounted = await readMountPoints();
    } catch (error) {
      for (const job of batch) job.reject(new MountCommandError(`cannot read the mount table: ${(error as Error).message}`));
      return;
    }
    const requeued: Job[] = [];
    await Promise.all(
      batch.map(async (job) => {
        const target = job.kind === "mount" ? job.request.target : job.target;
        const resolved = (await resolvedPath(target)) ?? target;
        if (mounted.has(resolved) === (job.kind === "mount")) {
          job.resolve();
          return;
        }
        if (timedOut) {
          if (performance.now() >= job.deadline) {
            job.reject(new MountTimeoutError(`${describe(job)} did not finish within ${seconds(job.timeoutMs)}s; the mount command was killed`));
          } else {
            job.suspect = true;
            requeued.push(job);
          }
          return;
        }
        const related = result.output
          .split("\n")
          .filter((line) => line.includes(target))
          .join("; ");
        job.reject(new MountCommandError(`${describe(job)} failed (exit ${result.status})${related || result.output ? `: ${related || result.output}` : ""}`));
      }),
    );
    this.queue.unshift(...requeued);
  }
}

function describe(job: Job): string {
  return job.kind === "mount" ? `mounting ${job.request.fsType} on ${job.request.target}` : `unmounting ${job.target}`;
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1);
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
async function mountAll(worker: ShellWorker, command: string, requests: readonly MountRequest[], timeoutMs: number): Promise<{ status: number; output: string }> {
  const dir = await mkdtemp(join(tmpdir(), fstabDirPrefix));
  try {
    const fstab = join(dir, "fstab");
    await writeFile(fstab, `${requests.map(fstabLine).join("\n")}\n`, { mode: 0o600 });
    return await worker.run(`${command} -a -T ${shellQuote(fstab)}`, timeoutMs);
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
