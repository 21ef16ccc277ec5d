import { readFileSync } from "node:fs";
import { MetadataStore } from "@spire-csi-driver/metadata-store";
import type { DriverConfig } from "./config/config.js";
import { seLinuxEnabled } from "./config/selinux-context.js";
import { acquireDriverLock } from "./driver-lock.js";
import { checkCsiServer } from "./csi/csi-self-check.js";
import { startCsiServer } from "./csi/csi-server.js";
import { KubeletRegistration } from "./csi/kubelet-registration.js";
import { resolveKubeletPaths } from "./files/kubelet-paths.js";
import { DriverMetrics } from "./metrics/driver-metrics.js";
import { startHttpServer, type HealthChecks } from "./metrics/http-server.js";
import type { Logger } from "./log.js";
import { AgentAvailability } from "./spire/agent-availability.js";
import { AgentCallLimiter } from "./spire/agent-call-limiter.js";
import { AgentProbe } from "./spire/agent-probe.js";
import { createAgentClient } from "./spire/agent-client.js";
import { jwtBundleFeed, x509BundleFeed } from "./spire/bundle-feed.js";
import { FanoutLog } from "./volume/fanout-log.js";
import { VolumeManager } from "./volume/volume-manager.js";

/** The package version, found from src/ (tsx) as well as from dist/src/ (the built image). */
function packageVersion(): string {
  for (const relative of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(relative, import.meta.url), "utf8")) as { name?: string; version: string };
      if (pkg.name === "spire-csi-driver") return pkg.version;
    } catch {
      // Not at this level; try the next one up.
    }
  }
  return "unknown";
}

const version = packageVersion();

/** The context= for volumes' tmpfs mounts: the configured one, on nodes that run SELinux. */
async function tmpfsSeLinuxContext(config: DriverConfig, logger: Logger): Promise<string | undefined> {
  if (config.seLinuxContext === undefined) return undefined;
  if (await seLinuxEnabled()) {
    logger.info({ seLinuxContext: config.seLinuxContext }, "SELinux is enabled: volumes are mounted with context=");
    return config.seLinuxContext;
  }
  logger.info("SELinux is not enabled on this node: volumes are mounted without context=");
  return undefined;
}

/** Wires config → agent client → volumes → CSI server, and tears it down in reverse order. */
export async function runDriver(config: DriverConfig, logger: Logger): Promise<{ stop(): Promise<void> }> {
  logger.info({ version, config }, "starting spire-csi-driver");
  let volumes: VolumeManager | undefined;
  let agentConnected = () => false;
  let agentAnswering = () => false;
  const isReady = () => agentConnected();
  let registration: KubeletRegistration | undefined;
  const agentCalls = new AgentCallLimiter(config.maxAgentCalls);
  const metrics = new DriverMetrics({
    version,
    volumes: () => volumes,
    agentConnected: isReady,
    kubeletRegistered: () => registration?.status?.registered === true,
    agentCalls,
  });
  let serving = false;
  const health: HealthChecks = {
    // Waiting for the lock and re-adopting volumes are progress, not a hang: alive meanwhile.
    // The deadline is below the chart's probe timeoutSeconds, so a slow answer fails the check.
    live: async () => (serving ? checkCsiServer(config.pluginSocket, 2_000) : { ok: true }),
    ready: () => serving && isReady() && agentAnswering(),
  };
  const httpServers = await startHttpServers(config, metrics, health, logger);
  // Before anything touches the metadata dir or a socket.
  const lock = await acquireDriverLock(config.metadataDir, logger);
  const store = await MetadataStore.open(config.metadataDir, { logger: logger.child({ component: "metadata-store" }) });
  const client = createAgentClient(config.agentSocket);
  const availability = new AgentAvailability(config.agentSocket, logger);
  await availability.start();
  const backoff = { minMs: config.reconnectMinMs, maxMs: config.reconnectMaxMs };
  const feedOptions = { client, availability, limiter: agentCalls, adminSocketPath: config.agentSocket, backoff, logger };
  const bundles = x509BundleFeed({ ...feedOptions, onRetry: () => metrics.streamRetrying("x509-bundles"), onRejected: () => metrics.bundleRejected("x509") });
  const jwtBundles = jwtBundleFeed({ ...feedOptions, onRetry: () => metrics.streamRetrying("jwt-bundles"), onRejected: () => metrics.bundleRejected("jwt") });
  agentConnected = () => bundles.connected;
  const probe = new AgentProbe(client, config.agentProbeTimeoutMs, logger.child({ component: "agent-probe" }));
  agentAnswering = () => probe.answering;
  probe.start();
  bundles.on("change", () => metrics.bundlesChanged("x509"));
  jwtBundles.on("change", () => metrics.bundlesChanged("jwt"));
  bundles.start();
  jwtBundles.start();
  volumes = new VolumeManager({
    store,
    backing: config.volumeBacking === "tmpfs" ? { kind: "tmpfs", size: config.tmpfsSize, seLinuxContext: await tmpfsSeLinuxContext(config, logger) } : { kind: "directory" },
    kubelet: await resolveKubeletPaths(config.kubeletRoot),
    publishTimeoutMs: config.publishTimeoutMs,
    logger: logger.child({ component: "volumes" }),
    volume: {
      client,
      bundles,
      jwtBundles,
      availability,
      limiter: agentCalls,
      adminSocketPath: config.agentSocket,
      backoff,
      jwtFetchTimeoutMs: config.jwtFetchTimeoutMs,
      nodeName: config.nodeId,
      trustDomain: config.trustDomain,
      logger,
      fanoutLog: new FanoutLog(logger.child({ component: "volumes" })),
      observer: metrics,
    },
  });
  await volumes.adoptAll();
  const server = await startCsiServer({
    socketPath: config.pluginSocket,
    version,
    nodeId: config.nodeId,
    kubeletRoot: config.kubeletRoot,
    volumes,
    logger,
  });
  registration = config.registrationSocket
    ? new KubeletRegistration({
        socketPath: config.registrationSocket,
        endpoint: config.pluginSocketHostPath,
        logger: logger.child({ component: "registration" }),
      })
    : undefined;
  await registration?.start();
  serving = true;
  logger.info({ registration: config.registrationSocket || "disabled" }, "driver started");
  const running = volumes;
  return {
    async stop() {
      // Deregister first, so kubelet stops sending calls before the CSI socket goes.
      await registration?.stop();
      // Side by side: the server stops taking calls and waits for those in flight, which the
      // volume manager's shutdown ends (a publish waiting for its SVID answers UNAVAILABLE).
      await Promise.all([server.close(), running.shutdown()]);
      await Promise.all(httpServers.map((http) => http.close()));
      await Promise.all([bundles.stop(), jwtBundles.stop()]);
      probe.stop();
      await availability.stop();
      await lock.release();
    },
  };
}

/** /metrics and the probes, on one listener when both addresses are the same, else on two. */
async function startHttpServers(config: DriverConfig, metrics: DriverMetrics, health: HealthChecks, logger: Logger) {
  if (config.metricsAddress && config.metricsAddress === config.healthAddress) {
    return [await startHttpServer({ address: config.metricsAddress, registry: metrics.registry, health, logger })];
  }
  const servers = [];
  if (config.healthAddress) servers.push(await startHttpServer({ address: config.healthAddress, health, logger }));
  if (config.metricsAddress) servers.push(await startHttpServer({ address: config.metricsAddress, registry: metrics.registry, logger }));
  return servers;
}
