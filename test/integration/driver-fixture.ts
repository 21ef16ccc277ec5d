import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import type { DriverProcessOptions } from "../support/driver-process.js";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { startFakeAgent, type FakeAgent } from "../support/fake-agent.js";

export interface DriverFixture extends DriverNode {
  agent: FakeAgent;
}

/** A fake agent plus a driver node against it; `close` stops everything and removes the dirs. */
export async function startDriverFixture(
  options: { driver?: Partial<DriverProcessOptions>; trustDomain?: string; withIntermediate?: boolean; jwtTtlSeconds?: number; svidTtlSeconds?: number } = {},
): Promise<DriverFixture> {
  const agentDir = await mkdtemp("/tmp/sagent-");
  await mkdir(join(agentDir, "agent"));
  const agent = await startFakeAgent({
    socketPath: join(agentDir, "agent", "admin.sock"),
    trustDomain: options.trustDomain ?? "example.org",
    withIntermediate: options.withIntermediate,
    jwtTtlSeconds: options.jwtTtlSeconds,
    svidTtlSeconds: options.svidTtlSeconds,
  });
  let node: DriverNode;
  try {
    node = await startDriverNode(agent.socketPath, options.driver);
  } catch (error) {
    await agent.stop();
    await rm(agentDir, { recursive: true, force: true });
    throw error;
  }
  return {
    ...node,
    agent,
    async close() {
      try {
        await node.close();
      } finally {
        await agent.stop();
        await rm(agentDir, { recursive: true, force: true });
      }
    },
  };
}
