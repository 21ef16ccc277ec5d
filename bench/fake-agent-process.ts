/**
 * The fake agent in a child process of its own, as the real agent is: its work (minting and
 * pushing hundreds of SVIDs) does not share an event loop with the bench's clocks and watchers.
 * Run as a script, it serves the requests the parent sends over IPC.
 */
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { startFakeAgent, type FakeAgent, type FakeAgentOptions, type FakeEntry } from "../test/support/fake-agent.js";
import { now } from "./clock.js";

type Request = { id: number } & ({ op: "start"; options: FakeAgentOptions } | { op: "add-entries"; entries: FakeEntry[] } | { op: "rotate" } | { op: "stop" });
type Reply = { id: number; result?: unknown; error?: string };

export class FakeAgentProcess {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(result: unknown): void; reject(error: Error): void }>();

  private constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    child.on("message", (reply: Reply) => {
      const waiter = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (reply.error !== undefined) waiter?.reject(new Error(`fake agent: ${reply.error}`));
      else waiter?.resolve(reply.result);
    });
    child.once("exit", (code, signal) => {
      for (const waiter of this.pending.values()) waiter.reject(new Error(`fake agent process exited (${signal ?? code})`));
      this.pending.clear();
    });
  }

  static async start(options: FakeAgentOptions): Promise<FakeAgentProcess> {
    const child = fork(fileURLToPath(import.meta.url), [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const agent = new FakeAgentProcess(child, options.socketPath);
    try {
      await agent.call({ op: "start", options });
    } catch (error) {
      child.kill("SIGKILL");
      throw error;
    }
    return agent;
  }

  async addEntries(entries: FakeEntry[]): Promise<void> {
    await this.call({ op: "add-entries", entries });
  }

  /** Re-issues every SVID and pushes them; resolves with the push time (clock.now()). */
  async rotate(): Promise<number> {
    return (await this.call({ op: "rotate" })) as number;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, "exit");
    await this.call({ op: "stop" }).catch(() => undefined);
    this.child.kill("SIGKILL");
    await exited;
  }

  private call(request: DistributiveOmit<Request, "id">): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ ...request, id });
    });
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

async function serve(): Promise<void> {
  let agent: FakeAgent | undefined;
  const handle = async (request: Request): Promise<unknown> => {
    switch (request.op) {
      case "start":
        agent = await startFakeAgent(request.options);
        return undefined;
      case "add-entries":
        for (const entry of request.entries) await agent!.addEntry(entry);
        return undefined;
      case "rotate": {
        let pushedAt = Number.NaN;
        agent!.once("x509-push", () => (pushedAt = now()));
        await agent!.rotate();
        return pushedAt;
      }
      case "stop":
        await agent?.stop();
        return undefined;
    }
  };
  process.on("message", (request: Request) => {
    handle(request).then(
      (result) => process.send!({ id: request.id, result }),
      (error: unknown) => process.send!({ id: request.id, error: error instanceof Error ? error.message : String(error) }),
    );
  });
  // The bench went away: nothing is left to serve.
  process.on("disconnect", () => process.exit(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await serve();
