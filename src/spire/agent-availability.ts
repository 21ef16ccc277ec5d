import { basename, dirname } from "node:path";
import { watch, type FSWatcher } from "chokidar";
import type { Logger } from "pino";

/**
 * Watches the directory of the agent's admin socket so that streams waiting out a backoff delay
 * resubscribe as soon as a restarted agent recreates its socket, instead of at the next tick.
 */
export class AgentAvailability {
  private watcher: FSWatcher | undefined;
  private readonly waiters = new Set<() => void>();

  constructor(
    private readonly adminSocketPath: string,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    const socketName = basename(this.adminSocketPath);
    this.watcher = watch(dirname(this.adminSocketPath), {
      depth: 0,
      ignoreInitial: true,
      // The dir may not exist yet when the driver starts before the agent.
      ignorePermissionErrors: true,
    });
    this.watcher.on("all", (event, path) => {
      if (basename(path) !== socketName || (event !== "add" && event !== "change")) return;
      this.logger.info({ socket: this.adminSocketPath }, "agent admin socket appeared; resubscribing now");
      this.wakeAll();
    });
    this.watcher.on("error", (error) => this.logger.warn({ err: error }, "watching the agent socket dir failed"));
    await new Promise<void>((resolve) => this.watcher?.once("ready", () => resolve()));
  }

  async stop(): Promise<void> {
    await this.watcher?.close();
    this.wakeAll();
  }

  /** Resolves after delayMs, when the socket reappears, or when the signal aborts, whichever is first. */
  sleepUnlessReappears(delayMs: number, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, delayMs);
      this.waiters.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  private wakeAll(): void {
    for (const wake of [...this.waiters]) wake();
  }
}
