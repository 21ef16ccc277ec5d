import type { DriverProcess } from "./driver-process.js";

/** The value of one series in a Prometheus text exposition, or undefined. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = /\{(.*)\}/.exec(line)?.[1] ?? "";
    if (Object.entries(labels).every(([key, value]) => labelText.includes(`${key}="${value}"`))) return Number(line.split(" ").pop());
  }
  return undefined;
}

/** The driver's /metrics text; its address comes from the driver's "listening" log line (since `fromIndex`, e.g. after a restart). */
export async function scrapeDriverMetrics(driver: DriverProcess, fromIndex = 0): Promise<string> {
  const line = await driver.waitForLog((entry) => entry.msg === "metrics and health endpoints listening", 10_000, fromIndex);
  return (await fetch(`http://${String(line.address)}/metrics`)).text();
}
