import type { DriverNode } from "../../test/support/driver-node.js";
import { now } from "../clock.js";
import { FileEvents, isSnapshotSwap } from "../file-events.js";

export interface RestartResult {
  volumes: number;
  /** New process spawned → CSI socket accepting calls. */
  socketReadyMs: number;
  /** New process spawned → the last volume's files rewritten from a live agent stream. */
  allRewrittenMs: number;
}

/** SIGKILLs the driver with its volumes published and times the new process re-adopting all of them. */
export async function measureRestart(node: DriverNode, targets: readonly string[]): Promise<RestartResult> {
  const events = new FileEvents();
  try {
    for (const target of targets) events.watch(target, isSnapshotSwap);
    await node.driver.stop("SIGKILL");
    node.driver.logs.length = 0;
    const spawnedAt = now();
    await node.driver.start();
    const socketReadyMs = now() - spawnedAt;
    const rewritten = await events.waitForAll(targets, spawnedAt, 60_000);
    const adoption = await node.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes");
    if (adoption.adopted !== targets.length) {
      throw new Error(`the restarted driver re-adopted ${String(adoption.adopted)} volumes, expected ${targets.length}`);
    }
    return { volumes: targets.length, socketReadyMs, allRewrittenMs: Math.max(...rewritten) - spawnedAt };
  } finally {
    events.close();
  }
}
