import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "./log.js";

/** flock(1)'s exit status when --nonblock finds the lock taken. */
const lockTakenExitCode = 75;
const waitingLogIntervalMs = 60_000;
/**
 * A waiting attempt blocks in flock(1) for at most this long, then tries again. Bounded so that a
 * driver killed while it waits leaves no flock process behind for longer than this.
 */
const waitAttemptSeconds = 5;

export interface DriverLock {
  readonly path: string;
  release(): Promise<void>;
}

/**
 * One driver per node. Two drivers on one metadata dir (a debug run, a surge rollout, an old pod
 * that has not exited) would re-adopt the same volumes twice and remove each other's sockets,
 * leaving a driver that runs but that kubelet cannot reach. So the driver holds an exclusive
 * flock(2) on `<metadata-dir>/.driver.lock` for its whole life.
 *
 * Node has no flock, and the maintained bindings need a native build; util-linux's flock(1) (the
 * image installs util-linux for mount(8)) holds it instead, in a child that lives exactly as long
 * as the driver: the child waits on its stdin, which only the driver holds, so when the driver
 * exits (even by SIGKILL) the pipe closes, the child ends and the kernel drops the lock. The
 * metadata dir is a host path, so the lock spans containers and PID namespaces.
 *
 * Decision: a second instance WAITS for the lock (logging who it waits for, every minute) rather
 * than exiting. In a DaemonSet rollout the new pod can start while the old one is still
 * terminating: waiting takes over the moment the old driver exits, whereas exiting would put the
 * new pod in CrashLoopBackOff and leave the node without a driver for the back-off delay. A
 * waiting driver touches nothing: no socket, no record, no mount; its /healthz answers (it is
 * doing what it should), its /readyz does not.
 */
export async function acquireDriverLock(metadataDir: string, logger: Logger): Promise<DriverLock> {
  await mkdir(metadataDir, { recursive: true, mode: 0o700 });
  const path = join(metadataDir, ".driver.lock");
  const immediate = await tryLock(path, 0);
  if (immediate) return immediate;
  const message = "another spire-csi-driver holds the lock on this node's metadata dir; waiting for it to exit (stop it, or give this one another --metadata-dir)";
  logger.warn({ lock: path }, message);
  const reminder = setInterval(() => logger.warn({ lock: path }, message), waitingLogIntervalMs);
  try {
    for (;;) {
      const lock = await tryLock(path, waitAttemptSeconds);
      if (lock) {
        logger.info({ lock: path }, "driver lock acquired");
        return lock;
      }
    }
  } finally {
    clearInterval(reminder);
  }
}

/** The lock, or undefined when another process still holds it after `waitSeconds`. */
async function tryLock(path: string, waitSeconds: number): Promise<DriverLock | undefined> {
  const wait = waitSeconds === 0 ? ["--nonblock"] : ["--timeout", String(waitSeconds)];
  const args = ["--exclusive", ...wait, "--conflict-exit-code", String(lockTakenExitCode), path];
  // `read` returns at EOF on stdin, i.e. when the driver closes the pipe or dies.
  const child = spawn("flock", [...args, "sh", "-c", "echo locked; read -r _"], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const outcome = await new Promise<"locked" | { code: number | null; error?: Error }>((resolve) => {
    child.stdout.once("data", () => resolve("locked"));
    child.once("error", (error) => resolve({ code: null, error }));
    child.once("exit", (code) => resolve({ code }));
  });
  if (outcome === "locked") return heldLock(path, child);
  if (outcome.code === lockTakenExitCode) return undefined;
  const reason = outcome.error
    ? (outcome.error as NodeJS.ErrnoException).code === "ENOENT"
      ? "flock(1) from util-linux is not installed"
      : outcome.error.message
    : `flock exited with ${outcome.code}: ${stderr.trim()}`;
  throw new Error(`cannot take the driver lock ${path}: ${reason}`);
}

function heldLock(path: string, child: ChildProcess): DriverLock {
  // The lock holder must not keep the event loop alive, nor outlive us.
  child.unref();
  for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as { unref?: () => void } | null)?.unref?.();
  return {
    path,
    async release() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.stdin?.end();
      await exited;
    },
  };
}
