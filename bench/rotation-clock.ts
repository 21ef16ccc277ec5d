/**
 * Records when the agent rotates one identity, as seen by a Delegated Identity subscriber in a
 * small process of its own: the bench's event loop is busy watching hundreds of directories
 * exactly when a rotation lands, and would stamp the push late. Run as a script, it subscribes
 * with the selectors in argv and sends the time (clock.now()) of every change of the leaf.
 */
import { fork, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { delegatedIdentityClient, parseSelector } from "../test/support/spire-fixture.js";
import { now } from "./clock.js";

export class RotationClock {
  private readonly changes: number[] = [];
  private readonly child: ChildProcess;

  constructor(adminSocket: string, selectors: readonly string[]) {
    this.child = fork(fileURLToPath(import.meta.url), [adminSocket, ...selectors], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.child.on("message", (message: { changedAt: number }) => this.changes.push(message.changedAt));
  }

  /** The first rotation after `since` (the SVID the subscription starts with does not count). */
  async next(since: number, timeoutMs: number): Promise<number> {
    const deadline = now() + timeoutMs;
    for (;;) {
      const change = this.changes.find((time) => time > since);
      if (change !== undefined) return change;
      if (now() > deadline) throw new Error(`no SVID rotation within ${timeoutMs} ms`);
      if (this.child.exitCode !== null) throw new Error(`the rotation clock exited with ${this.child.exitCode}`);
      await sleep(20);
    }
  }

  close(): void {
    this.child.kill("SIGKILL");
  }
}

async function follow(adminSocket: string, selectors: string[]): Promise<void> {
  const client = delegatedIdentityClient(adminSocket);
  let current: string | undefined;
  for (;;) {
    try {
      for await (const message of client.subscribeToX509SVIDs({ selectors: selectors.map(parseSelector) })) {
        const leaf = message.x509Svids[0]?.x509Svid?.certChain[0];
        if (!leaf) continue;
        const fingerprint = createHash("sha256").update(leaf).digest("hex");
        if (current !== undefined && fingerprint !== current) process.send!({ changedAt: now() });
        current = fingerprint;
      }
    } catch {
      await sleep(200);
    }
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // The bench went away: nothing is left to report to.
  process.on("disconnect", () => process.exit(0));
  const [adminSocket, ...selectors] = process.argv.slice(2);
  await follow(adminSocket!, selectors);
}
