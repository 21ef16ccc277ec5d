import { createServer, type Server } from "node:http";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { SelfCheck } from "../csi/csi-self-check.js";

/** The probes kubelet calls: liveness must not depend on the SPIRE agent, readiness does. */
export interface HealthChecks {
  /** /healthz: the process serves CSI (liveness). */
  live: () => Promise<SelfCheck>;
  /** /readyz: the SPIRE agent is reachable (readiness). */
  ready: () => boolean;
}

/**
 * One HTTP listener serving /metrics (when given a registry) and /healthz + /readyz (when given
 * health checks). The driver starts one per distinct address, so metrics and health can share a
 * port or use two.
 */
export async function startHttpServer(options: {
  address: string;
  registry?: Registry;
  health?: HealthChecks;
  logger: Logger;
}): Promise<{ port: number; close(): Promise<void> }> {
  const { registry, health } = options;
  const { host, port } = parseAddress(options.address);
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method !== "GET") {
      response.writeHead(405).end();
    } else if (registry && path === "/metrics") {
      registry.metrics().then(
        (body) => response.writeHead(200, { "content-type": registry.contentType }).end(body),
        (error: unknown) => response.writeHead(500).end(String(error)),
      );
    } else if (health && path === "/healthz") {
      health.live().then((result) => {
        if (!result.ok) options.logger.warn({ reason: result.reason }, "liveness check failed");
        response.writeHead(result.ok ? 200 : 503, { "content-type": "text/plain" }).end(result.ok ? "ok\n" : `${result.reason}\n`);
      });
    } else if (health && path === "/readyz") {
      const ready = health.ready();
      response.writeHead(ready ? 200 : 503, { "content-type": "text/plain" }).end(ready ? "ready\n" : "SPIRE agent not reachable\n");
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  const boundPort = typeof bound === "object" && bound ? bound.port : port;
  const served = [registry && "metrics", health && "health"].filter(Boolean).join(" and ");
  options.logger.info({ address: `${host}:${boundPort}` }, `${served} endpoints listening`);
  return {
    port: boundPort,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function parseAddress(address: string): { host: string; port: number } {
  const index = address.lastIndexOf(":");
  return { host: address.slice(0, index) || "0.0.0.0", port: Number(address.slice(index + 1)) };
}
