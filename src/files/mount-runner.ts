import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";

/** mount(8)/umount(8) could not do what was asked; the message holds their output. */
export class MountCommandError extends Error {
  override readonly name = "MountCommandError";
}

interface Job {
  line: string;
  describe: string;
  resolve(): void;
  reject(error: Error): void;
}

const jobTimeoutMs = 30_000;

/**
 * One long-lived `/bin/sh` that runs mount commands sent on its stdin, one at a time, and
 * reports each exit status after a per-shell marker line.
 */
class ShellWorker {
  private readonly marker = `__spire_csi_done_${randomBytes(8).toString("hex")}`;
  private readonly child: ChildProcess;
  private output = "";
  private current: Job | undefined;
  private timer: NodeJS.Timeout | undefined;
  dead = false;

  constructor(private readonly onIdle: (worker: ShellWorker) => void) {
    this.child = spawn("/bin/sh", [], { stdio: ["pipe", "pipe", "ignore"], env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" } });
    this.child.stdout!.setEncoding("utf8");
    this.child.stdout!.on("data", (chunk: string) => this.onOutput(chunk));
    this.child.stdin!.on("error", () => undefined);
    this.child.once("error", (error) => this.fail(new MountCommandError(`cannot run /bin/sh for mount commands: ${error.message}`)));
    this.child.once("exit", (code, signal) => this.fail(new MountCommandError(`the mount shell exited (${signal ?? code})`)));
    this.setRef(false);
  }

  get busy(): boolean {
    return this.current !== undefined;
  }

  run(job: Job): void {
    this.current = job;
    this.output = "";
    this.setRef(true);
    this.timer = setTimeout(() => {
      this.fail(new MountCommandError(`${job.describe} did not finish within ${jobTimeoutMs / 1000}s`));
      this.child.kill("SIGKILL");
    }, jobTimeoutMs);
    this.child.stdin!.write(`${job.line} 2>&1 </dev/null; status=$?; echo; echo "${this.marker} $status"\n`);
  }

  stop(): void {
    this.dead = true;
    this.child.stdin!.end();
    this.child.kill("SIGKILL");
  }

  private onOutput(chunk: string): void {
    this.output += chunk;
    const match = new RegExp(`\\n${this.marker} (\\d+)\\n$`).exec(this.output);
    if (!match || !this.current) return;
    const job = this.current;
    const status = Number(match[1]);
    const text = this.output.slice(0, match.index).trim();
    this.finish();
    if (status === 0) job.resolve();
    else job.reject(new MountCommandError(`${job.describe} failed (exit ${status})${text ? `: ${text}` : ""}`));
    this.onIdle(this);
  }

  private fail(error: Error): void {
    this.dead = true;
    const job = this.current;
    this.finish();
    job?.reject(error);
    this.onIdle(this);
  }

  private finish(): void {
    clearTimeout(this.timer);
    this.current = undefined;
    this.output = "";
    this.setRef(false);
  }

  /** An idle shell must not keep the driver (or a test) alive. */
  private setRef(active: boolean): void {
    const handles = [this.child, this.child.stdin as unknown as Socket, this.child.stdout as unknown as Socket];
    for (const handle of handles) {
      if (active) handle?.ref?.();
      else handle?.unref?.();
    }
  }
}

/**
 * Runs mount(8) and umount(8) off the event loop. Node's spawn blocks the event loop until the
 * child has exec'd, which for a process of the driver's size costs several milliseconds per
 * call; a burst of publishes would stall every other CSI call behind it. A few small shells
 * fork cheaply and run the commands while the event loop keeps serving.
 */
export class MountRunner {
  private readonly workers: ShellWorker[] = [];
  private readonly queue: Job[] = [];

  constructor(private readonly poolSize = 4) {}

  run(command: "mount" | "umount", args: readonly string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ line: [command, ...args].map(shellQuote).join(" "), describe: `${command} ${args.join(" ")}`, resolve, reject });
      this.dispatch();
    });
  }

  close(): void {
    for (const worker of this.workers) worker.stop();
    this.workers.length = 0;
  }

  private dispatch(): void {
    for (let index = this.workers.length - 1; index >= 0; index--) {
      if (this.workers[index]!.dead) this.workers.splice(index, 1);
    }
    while (this.queue.length > 0) {
      let worker = this.workers.find((candidate) => !candidate.busy && !candidate.dead);
      if (!worker && this.workers.length < this.poolSize) {
        worker = new ShellWorker(() => this.dispatch());
        this.workers.push(worker);
      }
      if (!worker) return;
      worker.run(this.queue.shift()!);
    }
  }
}

/** POSIX single quoting: nothing inside is special except the quote itself. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
