import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { MetadataStore } from "@spire-csi-driver/metadata-store";
import { pino } from "pino";
import { DriverError } from "../../src/errors.js";
import { resolveKubeletPaths } from "../../src/files/kubelet-paths.js";
import { AgentAvailability } from "../../src/spire/agent-availability.js";
import { AgentCallLimiter } from "../../src/spire/agent-call-limiter.js";
import { createAgentClient } from "../../src/spire/agent-client.js";
import { jwtBundleFeed, x509BundleFeed } from "../../src/spire/bundle-feed.js";
import { parseVolumeAttributes } from "../../src/volume/volume-attributes.js";
import { VolumeManager } from "../../src/volume/volume-manager.js";
import { FanoutLog } from "../../src/volume/fanout-log.js";
import { startFakeAgent } from "../support/fake-agent.js";

test("a record write that never returns fails the publish with DEADLINE_EXCEEDED at --publish-timeout", { timeout: 30_000 }, async (t) => {
  const dir = await mkdtemp("/tmp/scsi-rec-");
  t.after(() => rm(dir, { recursive: true, force: true }));
  const agent = await startFakeAgent({ socketPath: join(dir, "agent.sock") });
  t.after(() => agent.stop());
  await agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/ns/demo/sa/web", selectors: [{ type: "k8s", value: "ns:demo" }] });

  const store = await MetadataStore.open(join(dir, "meta"));
  // A disk that stops answering: the write never completes.
  store.put = () => new Promise<void>(() => undefined);
  const logger = pino({ level: "silent" });
  const client = createAgentClient(agent.socketPath);
  const availability = new AgentAvailability(agent.socketPath, logger);
  const limiter = new AgentCallLimiter(8);
  const backoff = { minMs: 100, maxMs: 1_000 };
  const feedOptions = { client, availability, limiter, adminSocketPath: agent.socketPath, backoff, logger };
  const bundles = x509BundleFeed(feedOptions);
  const jwtBundles = jwtBundleFeed(feedOptions);
  bundles.start();
  jwtBundles.start();
  t.after(() => Promise.all([bundles.stop(), jwtBundles.stop()]));
  const observer = { publishFinished() {}, snapshotWritten() {}, snapshotFailed() {}, svidRejected() {}, streamRetrying() {}, jwtFetchFinished() {} };
  const kubeletRoot = join(dir, "kubelet");
  const manager = new VolumeManager({
    store,
    backing: { kind: "directory" },
    kubelet: await resolveKubeletPaths(kubeletRoot),
    publishTimeoutMs: 1_000,
    logger,
    volume: { client, bundles, jwtBundles, availability, limiter, adminSocketPath: agent.socketPath, backoff, jwtFetchTimeoutMs: 30_000, nodeName: "node-1", trustDomain: undefined, logger, fanoutLog: new FanoutLog(logger), observer },
  });
  t.after(() => manager.shutdown());

  const uid = "0b6f2c1e-8a4d-4c3b-9e1f-0000000000aa";
  const targetPath = join(kubeletRoot, "pods", uid, "volumes", "kubernetes.io~csi", "spiffe", "mount");
  await mkdir(join(targetPath, ".."), { recursive: true });
  await assert.rejects(
    manager.publish({
      volumeId: "csi-record-hangs",
      targetPath,
      pod: { uid, name: "web-0", namespace: "demo", serviceAccount: "web" },
      rawAttributes: {},
      attributes: parseVolumeAttributes({}).attributes,
      fsGroup: undefined,
    }),
    (error: unknown) => {
      assert.ok(error instanceof DriverError);
      assert.equal(error.code, "deadline-exceeded");
      assert.equal(error.message, "writing the record of csi-record-hangs did not finish within 1s; kubelet retries");
      return true;
    },
  );
});
