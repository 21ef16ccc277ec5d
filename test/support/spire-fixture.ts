import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/** Directory holding spire-server-<v>, spire-agent-<v>, csi-sanity-<v> (scripts/build-peers.sh). */
export async function peerBinDir(): Promise<string> {
  if (process.env.SPIRE_CSI_PEER_BIN) return process.env.SPIRE_CSI_PEER_BIN;
  const { stdout } = await run("bash", [join(repoRoot, "scripts/build-peers.sh"), "spire-server", "spire-agent"], {
    maxBuffer: 16 * 1024 * 1024,
    timeout: 30 * 60_000,
  });
  return stdout.trim().split("\n").pop()!;
}

export const spireVersion = "v1.15.3";

export interface SpireOptions {
  trustDomain?: string;
  /** SPIFFE IDs allowed to use the agent's Delegated Identity API. */
  authorizedDelegates?: string[];
  defaultX509SvidTtl?: string;
  /** false starts only the server, e.g. as a second trust domain to federate with. */
  agent?: boolean;
}

export interface EntryOptions {
  spiffeId: string;
  selectors: string[];
  x509SvidTtl?: number;
  jwtSvidTtl?: number;
  hint?: string;
  federatesWith?: string[];
  parentId?: string;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const started = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of started) child.kill("SIGKILL");
});

/**
 * A real SPIRE server and agent (v1.15.3) on loopback and unix sockets in a temp dir: sqlite
 * datastore, join_token attestation, the unix workload attestor, an admin socket with
 * authorized delegates, and 1 s sync intervals so new entries reach the agent quickly.
 */
export class SpireFixture {
  readonly serverSocket: string;
  readonly workloadSocket: string;
  readonly adminSocket: string;
  readonly serverLog: string;
  readonly agentLog: string;
  agentId = "";
  private serverPort = 0;
  private server: ChildProcess | undefined;
  private agent: ChildProcess | undefined;
  private stopped = false;

  private constructor(
    readonly dir: string,
    readonly bin: string,
    readonly trustDomain: string,
    private readonly options: SpireOptions,
  ) {
    this.serverSocket = join(dir, "server", "api.sock");
    this.workloadSocket = join(dir, "workload", "agent.sock");
    this.adminSocket = join(dir, "admin", "admin.sock");
    this.serverLog = join(dir, "server.log");
    this.agentLog = join(dir, "agent.log");
  }

  static async start(options: SpireOptions = {}): Promise<SpireFixture> {
    const bin = await peerBinDir();
    const dir = await mkdtemp("/tmp/spire-");
    const trustDomain = options.trustDomain ?? "example.org";
    const fixture = new SpireFixture(dir, bin, trustDomain, options);
    try {
      await fixture.startServer();
      if (options.agent !== false) await fixture.startAgent(await fixture.createJoinToken());
    } catch (error) {
      const logs = await fixture.logTails();
      await fixture.stop();
      throw new Error(`SPIRE did not start: ${(error as Error).message}\n${logs}`);
    }
    return fixture;
  }

  get delegateId(): string {
    return `spiffe://${this.trustDomain}/spire-csi-driver`;
  }

  async serverCli(args: string[]): Promise<string> {
    const { stdout } = await run(join(this.bin, `spire-server-${spireVersion}`), [...args, "-socketPath", this.serverSocket], { timeout: 30_000 });
    return stdout;
  }

  /** Registers an entry under the agent; returns the entry id. */
  async createEntry(entry: EntryOptions): Promise<string> {
    const args = ["entry", "create", "-parentID", entry.parentId ?? this.agentId, "-spiffeID", entry.spiffeId, "-output", "json"];
    for (const selector of entry.selectors) args.push("-selector", selector);
    if (entry.x509SvidTtl) args.push("-x509SVIDTTL", String(entry.x509SvidTtl));
    if (entry.jwtSvidTtl) args.push("-jwtSVIDTTL", String(entry.jwtSvidTtl));
    if (entry.hint) args.push("-hint", entry.hint);
    for (const td of entry.federatesWith ?? []) args.push("-federatesWith", td);
    const output = JSON.parse(await this.serverCli(args)) as { results: { entry: { id: string } }[] };
    return output.results[0]!.entry.id;
  }

  /** This server's X.509 bundle in the SPIFFE bundle format (JWKS). */
  bundleShow(): Promise<string> {
    return this.serverCli(["bundle", "show", "-format", "spiffe"]);
  }

  /** Federates with another trust domain by setting its bundle (static federation). */
  async bundleSet(trustDomain: string, bundle: string): Promise<void> {
    const file = join(this.dir, `${trustDomain}.bundle.json`);
    await writeFile(file, bundle);
    await this.serverCli(["bundle", "set", "-format", "spiffe", "-id", `spiffe://${trustDomain}`, "-path", file]);
  }

  async deleteEntry(id: string): Promise<void> {
    await this.serverCli(["entry", "delete", "-entryID", id]);
  }

  /** Registers the calling process's uid as the driver's delegate identity. */
  registerDelegate(uid = process.getuid?.() ?? 0): Promise<string> {
    return this.createEntry({ spiffeId: this.delegateId, selectors: [`unix:uid:${uid}`] });
  }

  async restartAgent(): Promise<void> {
    await this.stopAgent("SIGTERM");
    await this.startAgent(undefined);
  }

  async stopAgent(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const agent = this.agent;
    this.agent = undefined;
    if (agent && agent.exitCode === null && agent.signalCode === null) {
      const exited = once(agent, "exit");
      agent.kill(signal);
      await exited;
    }
  }

  async startAgent(joinToken: string | undefined): Promise<void> {
    if (joinToken !== undefined) await this.writeAgentConfig(joinToken);
    this.agent = this.spawn("spire-agent", ["run", "-config", join(this.dir, "agent.conf")], this.agentLog);
    await this.waitHealthy("spire-agent", ["healthcheck", "-socketPath", this.workloadSocket]);
    await this.waitForFile(this.adminSocket);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.stopAgent("SIGKILL");
    const server = this.server;
    if (server && server.exitCode === null && server.signalCode === null) {
      const exited = once(server, "exit");
      server.kill("SIGKILL");
      await exited;
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  async logTails(lines = 30): Promise<string> {
    const tail = async (path: string) => (await readFile(path, "utf8").catch(() => "")).split("\n").slice(-lines).join("\n");
    return `--- server log ---\n${await tail(this.serverLog)}\n--- agent log ---\n${await tail(this.agentLog)}`;
  }

  private async startServer(): Promise<void> {
    for (const sub of ["server", "workload", "admin", "server-data", "agent-data"]) await mkdir(join(this.dir, sub), { recursive: true });
    const port = await freePort();
    await writeFile(
      join(this.dir, "server.conf"),
      `server {
  bind_address = "127.0.0.1"
  bind_port = "${port}"
  socket_path = "${this.serverSocket}"
  trust_domain = "${this.trustDomain}"
  data_dir = "${join(this.dir, "server-data")}"
  log_level = "DEBUG"
  default_x509_svid_ttl = "${this.options.defaultX509SvidTtl ?? "1h"}"
  ca_ttl = "24h"
  experimental {
    cache_reload_interval = "1s"
  }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "${join(this.dir, "server-data", "datastore.sqlite3")}"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`,
    );
    this.serverPort = port;
    this.server = this.spawn("spire-server", ["run", "-config", join(this.dir, "server.conf")], this.serverLog);
    await this.waitHealthy("spire-server", ["healthcheck", "-socketPath", this.serverSocket]);
  }

  private async createJoinToken(): Promise<string> {
    const output = await this.serverCli(["token", "generate", "-spiffeID", `spiffe://${this.trustDomain}/node/test`, "-ttl", "3600"]);
    const token = /Token: (\S+)/.exec(output)?.[1];
    if (!token) throw new Error(`no join token in: ${output}`);
    // The agent's own SPIFFE ID for a join token; entries hang under the alias node ID.
    this.agentId = `spiffe://${this.trustDomain}/node/test`;
    return token;
  }

  private async writeAgentConfig(joinToken: string): Promise<void> {
    const port = this.serverPort;
    const delegates = (this.options.authorizedDelegates ?? [this.delegateId]).map((id) => `"${id}"`).join(", ");
    await writeFile(
      join(this.dir, "agent.conf"),
      `agent {
  data_dir = "${join(this.dir, "agent-data")}"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "${port}"
  socket_path = "${this.workloadSocket}"
  admin_socket_path = "${this.adminSocket}"
  trust_domain = "${this.trustDomain}"
  insecure_bootstrap = true
  join_token = "${joinToken}"
  authorized_delegates = [${delegates}]
  experimental {
    sync_interval = "1s"
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "disk" {
    plugin_data {
      directory = "${join(this.dir, "agent-data")}"
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`,
    );
  }

  private spawn(name: "spire-server" | "spire-agent", args: string[], logFile: string): ChildProcess {
    const child = spawn(join(this.bin, `${name}-${spireVersion}`), args, { cwd: this.dir, stdio: ["ignore", "pipe", "pipe"] });
    const log = createWriteStream(logFile, { flags: "a" });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    started.add(child);
    child.once("exit", () => started.delete(child));
    return child;
  }

  private async waitHealthy(name: "spire-server" | "spire-agent", args: string[], timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      try {
        await run(join(this.bin, `${name}-${spireVersion}`), args, { timeout: 10_000 });
        return;
      } catch (error) {
        last = (error as { stderr?: string }).stderr ?? (error as Error).message;
      }
      await sleep(200);
    }
    throw new Error(`${name} not healthy within ${timeoutMs} ms: ${last}`);
  }

  private async waitForFile(path: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await access(path).then(() => true, () => false)) return;
      await sleep(100);
    }
    throw new Error(`${path} did not appear within ${timeoutMs} ms`);
  }
}
