import { readFileSync } from "node:fs";
import { MetadataStore } from "@spire-csi-driver/metadata-store";
import type { DriverConfig } from "./config/config.js";
import { startCsiServer } from "./csi/csi-server.js";
import { DriverMetrics } from "./metrics/driver-metrics.js";
import { startMetricsServer } from "./metrics/http-server.js";
import type { Logger } from "./log.js";
import { AgentAvailability } from "./spire/agent-availability.js";
import { createAgentClient } from "./spire/agent-client.js";
import { jwtBundleFeed, x509BundleFeed } from "./spire/bundle-feed.js";
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

/** Wires config → agent client → volumes → CSI server, and tears it down in reverse order. */
export async function runDriver(config: DriverConfig, logger: Logger): Promise<{ stop(): Promise<void> }> {
  logger.info({ version, config }, "starting spire-csi-driver");
  const store = await MetadataStore.open(config.metadataDir, { logger: logger.child({ component: "metadata-store" }) });
  const client = createAgentClient(config.agentSocket);
  const availability = new AgentAvailability(config.agentSocket, logger);
  await availability.start();
  const backoff = { minMs: config.reconnectMinMs, maxMs: config.reconnectMaxMs };
  let volumes: VolumeManager | undefined;
  const isReady = () => bundles.connected;
  const metrics = new DriverMetrics({ version, volumes: () => volumes, agentConnected: isReady });
  const feedOptions = { client, availability, adminSocketPath: config.agentSocket, backoff, logger };
  const bundles = x509BundleFeed({ ...feedOptions, onRetry: () => metrics.streamRetrying("x509-bundles") });
  const jwtBundles = jwtBundleFeed({ ...feedOptions, onRetry: () => metrics.streamRetrying("jwt-bundles") });
  bundles.on("change", () => metrics.bundlesChanged("x509"));
  jwtBundles.on("change", () => metrics.bundlesChanged("jwt"));
  bundles.start();
  jwtBundles.start();
  const metricsServer = config.metricsAddress
    ? await startMetricsServer({ address: config.metricsAddress, registry: metrics.registry, isReady, logger })
    : undefined;
  volumes = new VolumeManager({
    store,
    backing: config.volumeBacking === "tmpfs" ? { kind: "tmpfs", size: config.tmpfsSize } : { kind: "directory" },
    publishTimeoutMs: config.publishTimeoutMs,
    logger: logger.child({ component: "volumes" }),
    volume: {
      client,
      bundles,
      jwtBundles,
      availability,
      adminSocketPath: config.agentSocket,
      backoff,
      nodeName: config.nodeId,
      trustDomain: config.trustDomain,
      logger,
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
    isReady,
    logger,
  });
  const running = volumes;
  return {
    async stop() {
      await server.close();
      await running.shutdown();
      await metricsServer?.close();
      await Promise.all([bundles.stop(), jwtBundles.stop()]);
      await availability.stop();
    },
  };
}
