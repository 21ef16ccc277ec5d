import { createServer, type Server } from "node:http";
import type { Logger } from "pino";
import type { Registry } from "prom-client";

/** /metrics for Prometheus, /healthz (the process answers), /readyz (the agent is reachable). */
export async function startMetricsServer(options: {
  address: string;
  registry: Registry;
  isReady: () => boolean;
  logger: Logger;
}): Promise<{ port: number; close(): Promise<void> }> {
  const { host, port } = parseAddress(options.address);
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method !== "GET") {
      response.writeHead(405).end();
    } else if (path === "/metrics") {
      options.registry.metrics().then(
        (body) => response.writeHead(200, { "content-type": options.registry.contentType }).end(body),
        (error: unknown) => response.writeHead(500).end(String(error)),
      );
    } else if (path === "/healthz") {
      response.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      const ready = options.isReady();
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
  options.logger.info({ address: `${host}:${boundPort}` }, "metrics and health endpoints listening");
  return {
    port: boundPort,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function parseAddress(address: string): { host: string; port: number } {
  const index = address.lastIndexOf(":");
  return { host: address.slice(0, index) || "0.0.0.0", port: Number(address.slice(index + 1)) };
}
