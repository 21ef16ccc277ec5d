import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createWriteStream, existsSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DelegatedIdentity } from "../../src/gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/**
 * Directory holding spire-server-<v>, spire-agent-<v> (and csi-sanity-<v>, spiffe-helper-<v>):
 * env SPIRE_BIN_DIR (or SPIRE_CSI_PEER_BIN), else the last stdout line of scripts/build-peers.sh,
 * which builds missing peers into ~/.cache/spire-csi-driver/peers/bin (minutes when cold).
 */
export async function peerBinDir(): Promise<string> {
  const fromEnv = process.env.SPIRE_BIN_DIR || process.env.SPIRE_CSI_PEER_BIN;
  if (fromEnv) return fromEnv;
  const { stdout } = await run("bash", [join(repoRoot, "scripts/build-peers.sh"), "spire-server", "spire-agent"], {
    maxBuffer: 16 * 1024 * 1024,
    timeout: 30 * 60_000,
  });
  return stdout.trim().split("\n").pop()!;
}

export const spireVersion = "v1.15.3";

export interface SpireOptions {
  /** Default `example.org`. */
  trustDomain?: string;
  /** SPIFFE IDs allowed to use the agent's Delegated Identity API; default `[delegateId]`. `[]` leaves everyone out. */
  authorizedDelegates?: string[];
  /** The driver's delegate SPIFFE ID used by registerDelegate(); default `spiffe://<td>/spire-csi-driver`. */
  delegateId?: string;
  /** Server `default_x509_svid_ttl`: seconds or a Go duration ("1h"); default "1h". */
  defaultX509SvidTtl?: string | number;
  /** false starts only the server, e.g. as a second trust domain to federate with. */
  agent?: boolean;
  /** A disk UpstreamAuthority (PEM files): the test holds the key of the server's root CA. */
  upstreamAuthority?: { certFile: string; keyFile: string };
  /** The agent serves Go's pprof on a free loopback port, for counting what it holds open (agentSubscriptions). */
  agentProfiling?: boolean;
  /**
   * The agent's k8s workload attestor (next to the unix one), as docs/install.md deploys it: it
   * asks the kubelet on its secure port (client certificate, kubelet CA verified) for the pod of a
   * caller found through its cgroup.
   */
  kubeletAttestor?: { nodeName: string; caFile: string; certFile: string; keyFile: string };
}

export interface EntryOptions {
  spiffeId: string;
  /** "type:value" as the CLI takes them, e.g. "k8s:ns:default", "unix:uid:0". */
  selectors: string[];
  /** Seconds. */
  x509SvidTtl?: number;
  /** Seconds. */
  jwtSvidTtl?: number;
  hint?: string;
  /** Trust domain names or spiffe://<td> IDs. */
  federatesWith?: string[];
  /** Default: the agent (its join-token alias `agentId`). */
  parentId?: string;
}

export interface WaitForEntryOptions {
  spiffeId: string;
  /** "type:value" strings, the same form as EntryOptions.selectors. */
  selectors: string[];
  timeoutMs?: number;
}

export type DelegatedIdentityClient = Client<typeof DelegatedIdentity>;

/** A Connect gRPC client of the Delegated Identity API on an agent admin socket. */
export function delegatedIdentityClient(adminSocket: string): DelegatedIdentityClient {
  return createClient(
    DelegatedIdentity,
    createGrpcTransport({ baseUrl: "http://localhost", nodeOptions: { createConnection: () => connect(adminSocket) } }),
  );
}

/** "k8s:ns:demo" → { type: "k8s", value: "ns:demo" } */
export function parseSelector(selector: string): { type: string; value: string } {
  const colon = selector.indexOf(":");
  if (colon <= 0) throw new Error(`selector "${selector}" is not type:value`);
  return { type: selector.slice(0, colon), value: selector.slice(colon + 1) };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function alive(child: ChildProcess | undefined): boolean {
  return child !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Kills by PID and waits for the exit event (SIGKILL after `graceMs` if `signal` was gentler). */
async function terminate(child: ChildProcess | undefined, signal: NodeJS.Signals, graceMs = 10_000): Promise<void> {
  if (!child || !alive(child) || child.pid === undefined) return;
  const exited = once(child, "exit");
  try {
    process.kill(child.pid, signal);
  } catch {
    // already gone
  }
  if (signal !== "SIGKILL") {
    const timer = setTimeout(() => {
      try {
        process.kill(child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }, graceMs);
    await exited;
    clearTimeout(timer);
  } else {
    await exited;
  }
}

// Backstops so no SPIRE process outlives the test process, even when a test fails or hangs:
// children get PDEATHSIG=SIGKILL (setpriv, util-linux) where available, and every live child is
// killed by PID (and temp dirs of fixtures never stopped removed) on exit and on SIGINT/SIGTERM/SIGHUP.
const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((path) => existsSync(path));
const live = new Set<number>();
const liveDirs = new Set<string>();
function killAllLive(): void {
  for (const pid of live) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
  liveDirs.clear();
}
process.once("exit", killAllLive);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  const onSignal = () => {
    killAllLive();
    // Only re-raise when no one else handles the signal; otherwise leave it to them.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  process.once(signal, onSignal);
}

/** Starts a SPIRE v1.15.3 server (+ agent unless `agent: false`) in a fresh /tmp/spire-XXXXXX dir. */
export function startSpire(options: SpireOptions = {}): Promise<SpireFixture> {
  return SpireFixture.start(options);
}

/**
 * A real SPIRE server and agent (v1.15.3) on loopback and unix sockets in a temp dir: sqlite
 * datastore, join_token attestation, the unix workload attestor, an admin socket (in its own dir,
 * apart from the Workload API socket) with authorized delegates, and 1 s sync intervals so new
 * entries reach the agent in about a second.
 */
export class SpireFixture {
  readonly serverSocket: string;
  readonly workloadSocket: string;
  readonly adminSocket: string;
  readonly serverLog: string;
  readonly agentLog: string;
  readonly delegateId: string;
  /** Parent ID for workload entries: the alias SPIFFE ID the join token was generated with. */
  agentId = "";
  /** The agent's own SPIFFE ID: spiffe://<td>/spire/agent/join_token/<token>. */
  agentSpiffeId = "";
  private serverPort = 0;
  private agentProfilingPort: number | undefined;
  private server: ChildProcess | undefined;
  private agent: ChildProcess | undefined;
  private stopped = false;
  private stopping: Promise<void> | undefined;

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
    this.delegateId = options.delegateId ?? `spiffe://${trustDomain}/spire-csi-driver`;
  }

  static async start(options: SpireOptions = {}): Promise<SpireFixture> {
    const bin = await peerBinDir();
    const dir = await mkdtemp("/tmp/spire-");
    liveDirs.add(dir);
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

  get serverPid(): number | undefined {
    return alive(this.server) ? this.server!.pid : undefined;
  }

  get agentPid(): number | undefined {
    return alive(this.agent) ? this.agent!.pid : undefined;
  }

  /**
   * The Delegated Identity X.509-SVID subscriptions the agent is serving right now: its goroutines
   * inside SubscribeToX509SVIDs, one per open stream, from pprof (needs `agentProfiling`).
   */
  async agentSubscriptions(): Promise<number> {
    if (this.agentProfilingPort === undefined) throw new Error("start SPIRE with agentProfiling: true to count the agent's subscriptions");
    const response = await fetch(`http://127.0.0.1:${this.agentProfilingPort}/debug/pprof/goroutine?debug=1`);
    if (!response.ok) throw new Error(`the agent's pprof answered ${response.status}`);
    // debug=1 groups identical stacks: "<count> @ <pcs>" then the frames, groups split by a blank line.
    let subscriptions = 0;
    for (const group of (await response.text()).split("\n\n")) {
      const count = /^(\d+) @/m.exec(group)?.[1];
      if (count !== undefined && /delegatedidentity.*SubscribeToX509SVIDs/.test(group)) subscriptions += Number(count);
    }
    return subscriptions;
  }

  /** Runs `spire-server <args> -socketPath <server socket>`; returns stdout. */
  async serverCli(args: string[]): Promise<string> {
    const { stdout } = await run(join(this.bin, `spire-server-${spireVersion}`), [...args, "-socketPath", this.serverSocket], { timeout: 30_000 });
    return stdout;
  }

  /** Registers an entry (parent: the agent unless `parentId`); returns the entry id. */
  async createEntry(entry: EntryOptions): Promise<string> {
    const args = ["entry", "create", "-parentID", entry.parentId ?? this.agentId, "-spiffeID", entry.spiffeId, "-output", "json"];
    for (const selector of entry.selectors) args.push("-selector", selector);
    if (entry.x509SvidTtl) args.push("-x509SVIDTTL", String(entry.x509SvidTtl));
    if (entry.jwtSvidTtl) args.push("-jwtSVIDTTL", String(entry.jwtSvidTtl));
    if (entry.hint) args.push("-hint", entry.hint);
    for (const td of entry.federatesWith ?? []) args.push("-federatesWith", td);
    const output = JSON.parse(await this.serverCli(args)) as { results: { status?: { code?: number; message?: string }; entry?: { id: string } }[] };
    const result = output.results[0];
    if (!result?.entry?.id) throw new Error(`entry create failed: ${JSON.stringify(result?.status ?? output)}`);
    return result.entry.id;
  }

  /** Registers many entries in one batch (`entry create -data`); throws if any was refused. */
  async createEntries(entries: readonly EntryOptions[]): Promise<void> {
    const file = join(this.dir, `entries-${Date.now()}.json`);
    const body = entries.map((entry) => ({
      spiffe_id: entry.spiffeId,
      parent_id: entry.parentId ?? this.agentId,
      selectors: entry.selectors.map(parseSelector),
      ...(entry.x509SvidTtl ? { x509_svid_ttl: entry.x509SvidTtl } : {}),
      ...(entry.jwtSvidTtl ? { jwt_svid_ttl: entry.jwtSvidTtl } : {}),
      ...(entry.hint ? { hint: entry.hint } : {}),
      ...(entry.federatesWith ? { federates_with: entry.federatesWith } : {}),
    }));
    await writeFile(file, JSON.stringify({ entries: body }));
    const output = JSON.parse(await this.serverCli(["entry", "create", "-data", file, "-output", "json"])) as { results: { status?: { code?: number; message?: string } }[] };
    const refused = output.results.filter((result) => (result.status?.code ?? 0) !== 0);
    if (refused.length > 0 || output.results.length !== entries.length) {
      throw new Error(`entry create refused ${refused.length} of ${entries.length}: ${JSON.stringify(refused[0]?.status ?? output)}`);
    }
  }

  async deleteEntry(id: string): Promise<void> {
    await this.serverCli(["entry", "delete", "-entryID", id]);
  }

  /** Registers the driver's delegate identity (default selector: this process's `unix:uid`); returns the entry id. */
  registerDelegate(selectors = [`unix:uid:${process.getuid?.() ?? 0}`]): Promise<string> {
    return this.createEntry({ spiffeId: this.delegateId, selectors });
  }

  /** A Delegated Identity API client on this agent's admin socket (one connection per client). */
  client(): DelegatedIdentityClient {
    return delegatedIdentityClient(this.adminSocket);
  }

  /**
   * Waits until the agent hands out an X.509-SVID for `spiffeId` to `selectors` through the
   * Delegated Identity API; returns the milliseconds waited. Needs this process registered as
   * an authorized delegate (registerDelegate); PermissionDenied right after registering is retried.
   */
  async waitForEntryOnAgent({ spiffeId, selectors, timeoutMs = 30_000 }: WaitForEntryOptions): Promise<number> {
    const started = Date.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let last = "";
    try {
      while (!abort.signal.aborted) {
        try {
          const stream = this.client().subscribeToX509SVIDs({ selectors: selectors.map(parseSelector) }, { signal: abort.signal });
          for await (const message of stream) {
            const ids = message.x509Svids.map((s) => `spiffe://${s.x509Svid?.id?.trustDomain}${s.x509Svid?.id?.path}`);
            if (ids.includes(spiffeId)) return Date.now() - started;
            last = `agent sent [${ids.join(", ")}]`;
          }
        } catch (error) {
          if (abort.signal.aborted) break;
          last = (error as Error).message;
        }
        await sleep(200, undefined, { signal: abort.signal }).catch(() => undefined);
      }
      throw new Error(`agent did not issue ${spiffeId} for [${selectors.join(", ")}] within ${timeoutMs} ms: ${last}`);
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
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

  /** SIGTERM, wait for exit, start again with the same data dir (the agent keeps its SVID); waits for fresh sockets. */
  async restartAgent(): Promise<void> {
    await this.stopAgent("SIGTERM");
    await this.startAgent();
  }

  /** Whether `spire-agent healthcheck` answers healthy within `timeoutMs` (a deadlocked agent's does not). */
  async agentHealthy(timeoutMs = 10_000): Promise<boolean> {
    if (!alive(this.agent)) return false;
    try {
      await run(join(this.bin, `spire-agent-${spireVersion}`), ["healthcheck", "-socketPath", this.workloadSocket], { timeout: timeoutMs });
      return true;
    } catch {
      return false;
    }
  }

  /** SIGKILL the agent and wait for it to exit (its socket files stay behind, as after a crash). */
  killAgent(): Promise<void> {
    return this.stopAgent("SIGKILL");
  }

  /** Sends `signal` to the agent by PID and waits for it to exit (SIGKILL after 10 s). */
  async stopAgent(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const agent = this.agent;
    this.agent = undefined;
    await terminate(agent, signal);
  }

  /**
   * Starts the agent; waits until it is healthy and its admin socket accepts connections. A
   * joinToken (re)writes agent.conf; without one the existing config and data dir are reused.
   */
  async startAgent(joinToken?: string): Promise<void> {
    if (alive(this.agent)) throw new Error("spire-agent is already running");
    if (joinToken !== undefined) await this.writeAgentConfig(joinToken);
    // Stale socket files from a killed agent would make the readiness checks pass too early.
    await rm(this.adminSocket, { force: true });
    await rm(this.workloadSocket, { force: true });
    this.agent = this.spawn("spire-agent", ["run", "-config", join(this.dir, "agent.conf")], this.agentLog);
    await this.waitHealthy("spire-agent", ["healthcheck", "-socketPath", this.workloadSocket], this.agent);
    await this.waitForSocket(this.adminSocket, this.agent);
  }

  /** Kills server and agent by PID, waits for both to exit, removes the temp dir. Safe to call twice. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.stopped = true;
      await this.stopAgent("SIGKILL");
      const server = this.server;
      this.server = undefined;
      await terminate(server, "SIGKILL");
      await rm(this.dir, { recursive: true, force: true });
      liveDirs.delete(this.dir);
    })();
    return this.stopping;
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** The last `lines` lines of the server and agent logs (for failure messages). */
  async logTails(lines = 30): Promise<string> {
    const tail = async (path: string) => (await readFile(path, "utf8").catch(() => "")).split("\n").slice(-lines).join("\n");
    return `--- ${this.serverLog} ---\n${await tail(this.serverLog)}\n--- ${this.agentLog} ---\n${await tail(this.agentLog)}`;
  }

  private async startServer(): Promise<void> {
    for (const sub of ["server", "workload", "admin", "server-data", "agent-data"]) await mkdir(join(this.dir, sub), { recursive: true });
    const port = await freePort();
    const ttl = this.options.defaultX509SvidTtl ?? "1h";
    await writeFile(
      join(this.dir, "server.conf"),
      `server {
  bind_address = "127.0.0.1"
  bind_port = "${port}"
  socket_path = "${this.serverSocket}"
  trust_domain = "${this.trustDomain}"
  data_dir = "${join(this.dir, "server-data")}"
  log_level = "DEBUG"
  default_x509_svid_ttl = "${typeof ttl === "number" ? `${ttl}s` : ttl}"
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
${
  this.options.upstreamAuthority
    ? `  UpstreamAuthority "disk" {
    plugin_data {
      cert_file_path = "${this.options.upstreamAuthority.certFile}"
      key_file_path = "${this.options.upstreamAuthority.keyFile}"
    }
  }
`
    : ""
}}
`,
    );
    this.serverPort = port;
    this.server = this.spawn("spire-server", ["run", "-config", join(this.dir, "server.conf")], this.serverLog);
    await this.waitHealthy("spire-server", ["healthcheck", "-socketPath", this.serverSocket], this.server);
  }

  private async createJoinToken(): Promise<string> {
    const alias = `spiffe://${this.trustDomain}/node/test`;
    const output = await this.serverCli(["token", "generate", "-spiffeID", alias, "-ttl", "3600"]);
    const token = /Token: (\S+)/.exec(output)?.[1];
    if (!token) throw new Error(`no join token in: ${output}`);
    // The token's -spiffeID makes the server create a node alias entry for the agent, so
    // workload entries can hang under a SPIFFE ID known before the agent attests.
    this.agentId = alias;
    this.agentSpiffeId = `spiffe://${this.trustDomain}/spire/agent/join_token/${token}`;
    return token;
  }

  private kubeletAttestorConfig(): string {
    const kubelet = this.options.kubeletAttestor;
    if (kubelet === undefined) return "";
    return `  WorkloadAttestor "k8s" {
    plugin_data {
      node_name = "${kubelet.nodeName}"
      kubelet_ca_path = "${kubelet.caFile}"
      certificate_path = "${kubelet.certFile}"
      private_key_path = "${kubelet.keyFile}"
    }
  }
`;
  }

  private async writeAgentConfig(joinToken: string): Promise<void> {
    const port = this.serverPort;
    const delegates = (this.options.authorizedDelegates ?? [this.delegateId]).map((id) => `"${id}"`).join(", ");
    if (this.options.agentProfiling) this.agentProfilingPort ??= await freePort();
    const profiling = this.agentProfilingPort === undefined ? "" : `  profiling_enabled = true\n  profiling_port = ${this.agentProfilingPort}\n`;
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
${profiling}  experimental {
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
${this.kubeletAttestorConfig()}}
`,
    );
  }

  private spawn(name: "spire-server" | "spire-agent", args: string[], logFile: string): ChildProcess {
    const binary = join(this.bin, `${name}-${spireVersion}`);
    // setpriv execs the binary in place, so child.pid is the SPIRE process itself.
    const [command, argv] = setpriv ? [setpriv, ["--pdeathsig", "KILL", "--", binary, ...args]] : [binary, args];
    const child = spawn(command, argv, { cwd: this.dir, stdio: ["ignore", "pipe", "pipe"] });
    const log = createWriteStream(logFile, { flags: "a" });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    child.once("error", (error) => log.write(`spawn ${name} failed: ${error.message}\n`));
    const pid = child.pid;
    if (pid !== undefined) {
      live.add(pid);
      child.once("exit", () => live.delete(pid));
    }
    return child;
  }

  private async waitHealthy(name: "spire-server" | "spire-agent", args: string[], child: ChildProcess, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      if (!alive(child)) throw new Error(`${name} exited (code ${child.exitCode}, signal ${child.signalCode}) before becoming healthy`);
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

  private async waitForSocket(path: string, child: ChildProcess, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!alive(child)) throw new Error(`process exited before ${path} accepted connections`);
      if (await canConnect(path)) return;
      await sleep(100);
    }
    throw new Error(`${path} did not accept connections within ${timeoutMs} ms`);
  }
}
