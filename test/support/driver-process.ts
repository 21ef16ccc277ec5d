import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, readFileSync, type WriteStream } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { findSecrets } from "./secret-detector.js";

const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

export interface DriverProcessOptions {
  pluginSocket: string;
  agentSocket: string;
  kubeletRoot: string;
  metadataDir: string;
  nodeId?: string;
  /** Default tmpfs, as in production; a test that passes "directory" says why. */
  volumeBacking?: "tmpfs" | "directory";
  publishTimeout?: string;
  reconnectMin?: string;
  reconnectMax?: string;
  logFile: string;
  /** Defaults to an ephemeral loopback port; the bound address is logged. */
  metricsAddress?: string;
  /** Defaults to the metrics address, so one listener serves /metrics, /healthz and /readyz. */
  healthAddress?: string;
  /** Default "debug", so tests can wait for any log line. */
  logLevel?: "debug" | "info" | "warn";
  /**
   * "source" (default) runs src/main.ts through tsx; "build" runs the compiled dist/ the way the
   * container image does (needs `npm run build` first), for measurements without tsx's overhead.
   */
  entry?: "source" | "build";
  /** Extra node flags, e.g. ["--cpu-prof"] to profile (written on a clean exit only); with entry "build", after the image's. */
  nodeFlags?: string[];
  /** The node binary; default the one running the tests. The bench passes the image's (scripts/image-node.sh). */
  nodeBinary?: string;
  /** The driver's TMPDIR (its mount batches' fstab files), so a killed driver leaves nothing elsewhere. */
  tmpDir?: string;
  /** Extra environment for the driver, e.g. SPIRE_CSI_CRASH_TEST_PAUSE (read at each start). */
  env?: Record<string, string>;
  /** A dir put first on the driver's PATH, e.g. with a mount(8) that hangs. */
  pathPrefix?: string;
  extraArgs?: string[];
  /** The driver's umask, e.g. "077" as on hardened nodes (set by a shell that then execs node). */
  umask?: string;
}

interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

/**
 * The driver as a real child process (`node --import tsx src/main.ts`), so tests go through the
 * CSI socket and can SIGKILL it. Every log line is kept (parsed) and appended to a file.
 */
export class DriverProcess {
  readonly logs: LogLine[] = [];
  readonly rawOutput: string[] = [];
  /** Log lines that carried secret material; dispose() fails the test when there are any. */
  readonly secretLeaks: string[] = [];
  private child: ChildProcess | undefined;
  private logStream: WriteStream | undefined;

  constructor(readonly options: DriverProcessOptions) {}

  static async start(options: DriverProcessOptions): Promise<DriverProcess> {
    const driver = new DriverProcess(options);
    await driver.start();
    return driver;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running) throw new Error("driver already running");
    const logsBeforeStart = this.logs.length;
    const { options } = this;
    // Extra flags come after the image's, so one of them can override an image flag (the last wins).
    const nodeFlags = options.nodeFlags ?? [];
    const entry = options.entry === "build" ? [...imageNodeFlags(), ...nodeFlags, join(repoRoot, "dist/src/main.js")] : [...nodeFlags, "--import", "tsx", join(repoRoot, "src/main.ts")];
    const args = [
      ...entry,
      "--plugin-socket", options.pluginSocket,
      "--agent-socket", options.agentSocket,
      "--kubelet-root", options.kubeletRoot,
      "--metadata-dir", options.metadataDir,
      "--node-id", options.nodeId ?? "test-node",
      "--volume-backing", options.volumeBacking ?? "tmpfs",
      "--publish-timeout", options.publishTimeout ?? "10s",
      "--reconnect-min", options.reconnectMin ?? "100ms",
      "--reconnect-max", options.reconnectMax ?? "1s",
      "--log-level", options.logLevel ?? "debug",
      "--metrics-address", options.metricsAddress ?? "127.0.0.1:0",
      "--health-address", options.healthAddress ?? options.metricsAddress ?? "127.0.0.1:0",
      ...(options.extraArgs ?? []),
    ];
    this.logStream ??= createWriteStream(options.logFile, { flags: "a" });
    const env = {
      ...process.env,
      ...(options.tmpDir === undefined ? {} : { TMPDIR: options.tmpDir }),
      ...(options.pathPrefix === undefined ? {} : { PATH: `${options.pathPrefix}:${process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"}` }),
      ...options.env,
    };
    const node = options.nodeBinary ?? process.execPath;
    const [command, commandArgs] = options.umask === undefined ? [node, args] : ["/bin/sh", ["-c", `umask ${options.umask} && exec "$0" "$@"`, node, ...args]];
    const child = spawn(command, commandArgs, { cwd: repoRoot, env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    trackChild(child);
    let buffered = "";
    const onData = (chunk: Buffer) => {
      this.logStream?.write(chunk);
      buffered += chunk.toString("utf8");
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        this.rawOutput.push(line);
        const found = findSecrets(line);
        if (found.length > 0) this.secretLeaks.push(`${found.join(", ")}: ${line.slice(0, 120)}`);
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          // Not JSON (e.g. a stack trace on stderr): kept in rawOutput only.
        }
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    await this.waitForSocket(logsBeforeStart);
  }

  /** Waits for this start's "driver started" line: one from an earlier run of the same process object does not count. */
  private async waitForSocket(fromIndex: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`driver exited during start:\n${this.rawOutput.slice(-20).join("\n")}`);
      // "driver started" comes after the CSI socket and the kubelet registration socket are served.
      if (this.logs.slice(fromIndex).some((line) => line.msg === "driver started") && (await canConnect(this.options.pluginSocket))) return;
      await sleep(50);
    }
    throw new Error(`driver socket ${this.options.pluginSocket} did not come up in ${timeoutMs} ms`);
  }

  /** Sends the signal and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = this.child;
    if (!child || !this.running) return { code: child?.exitCode ?? null, signal: child?.signalCode ?? null };
    const exited = once(child, "exit") as Promise<[number | null, NodeJS.Signals | null]>;
    child.kill(signal);
    const [code, exitSignal] = await exited;
    return { code, signal: exitSignal };
  }

  async restart(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.stop(signal);
    this.logs.length = 0;
    await this.start();
  }

  async dispose(): Promise<void> {
    await this.stop("SIGKILL");
    await new Promise<void>((resolve) => (this.logStream ? this.logStream.end(resolve) : resolve()));
    this.logStream = undefined;
    if (this.secretLeaks.length > 0) {
      throw new Error(`the driver logged secret material (${this.secretLeaks.length} lines):\n${this.secretLeaks.slice(0, 3).join("\n")}`);
    }
  }

  /** Waits until a log line matches, checking lines logged since `fromIndex`. */
  async waitForLog(predicate: (line: LogLine) => boolean, timeoutMs = 20_000, fromIndex = 0): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const match = this.logs.slice(fromIndex).find(predicate);
      if (match) return match;
      await sleep(25);
    }
    throw new Error(`no matching driver log line within ${timeoutMs} ms; last lines:\n${this.rawOutput.slice(-15).join("\n")}`);
  }
}

/** The environment the container image sets (`ENV` lines after its last `FROM`), for a measured driver. */
export function imageEnv(): Record<string, string> {
  const dockerfile = readFileSync(join(repoRoot, "Dockerfile"), "utf8");
  const runtimeStage = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  const env: Record<string, string> = {};
  for (const [, assignments] of runtimeStage.matchAll(/^ENV (.+)$/gm)) {
    for (const assignment of assignments!.trim().split(/\s+/)) {
      const [name, value] = assignment.split("=", 2);
      if (!name || value === undefined) throw new Error(`Dockerfile ENV must be NAME=value pairs: ${assignments}`);
      env[name] = value;
    }
  }
  return env;
}

/** The node flags of the container image's ENTRYPOINT, so a measured driver runs as it does in production. */
export function imageNodeFlags(): string[] {
  const dockerfile = readFileSync(join(repoRoot, "Dockerfile"), "utf8");
  const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)?.[1];
  if (!entrypoint) throw new Error("Dockerfile has no exec-form ENTRYPOINT");
  const argv = JSON.parse(entrypoint) as string[];
  if (argv[0] !== "node" || argv.at(-1) !== "dist/src/main.js") throw new Error(`unexpected ENTRYPOINT ${entrypoint}`);
  return argv.slice(1, -1);
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Backstop: no driver process outlives the test run, even when a test forgets to dispose it. */
function trackChild(child: ChildProcess): void {
  children.add(child);
  child.once("exit", () => children.delete(child));
}
