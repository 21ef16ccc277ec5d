/**
 * JWT failure paths with the fake agent (RELIABILITY.md, "Agent-side changes" 4): FetchJWTSVIDs
 * refused, unavailable, failing or never answering, and the JWT bundle stream dropped or sending
 * a malformed JWKS. The last good token and JWKS files must stay, retries must be paced by the
 * backoff and fit under --max-agent-calls, and metrics and logs must say what failed.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { notAuthorizedMessage } from "../support/fake-agent.js";
import type { PublishedVolume } from "../support/kubelet-sim.js";
import { sample, scrapeDriverMetrics } from "../support/prometheus.js";
import { waitUntil } from "../support/wait-until.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const podUid = (index: number) => `a7b8c9d0-0000-4000-8000-00000000000${index}`;
const pod = (index: number) => ({ uid: podUid(index), name: `token-${index}`, namespace: "jwt", serviceAccount: "reader" });
const spiffeId = "spiffe://example.org/ns/jwt/sa/reader";
const reconnectMaxMs = 400;
const maxAgentCalls = 2;
const fetchFailedLog = "fetching a JWT-SVID failed; the previous token stays";

describe("JWT failure paths", () => {
  let fx: DriverFixture;
  const volumes: PublishedVolume[] = [];
  const token = (volume: PublishedVolume) => readFile(join(volume.targetPath, "jwt-vault.token"), "utf8");
  const jwks = (volume: PublishedVolume) => readFile(join(volume.targetPath, "example.org.jwt-bundle.json"), "utf8");

  /** Waits until every volume logged `count` failed fetches since `mark`; returns those lines. */
  const waitForFailures = async (count: number, mark: number) => {
    const failuresOf = (volume: PublishedVolume) => fx.driver.logs.slice(mark).filter((line) => line.volumeId === volume.volumeId && line.msg === fetchFailedLog);
    await waitUntil(`every volume logs ${count} failed fetches`, async () => volumes.every((volume) => failuresOf(volume).length >= count), 20_000, 100);
    return fx.driver.logs.slice(mark).filter((line) => line.msg === fetchFailedLog);
  };
  const waitForNewTokens = async (previous: string[]) => {
    for (const [index, volume] of volumes.entries()) {
      await waitUntil(`volume ${index}: a new token after the fault ended`, async () => (await token(volume)) !== previous[index], 20_000, 100);
    }
  };

  before(async () => {
    // Tokens live 4 s, so every fault below spans at least one due refresh.
    fx = await startDriverFixture({
      jwtTtlSeconds: 4,
      driver: {
        reconnectMin: "100ms",
        reconnectMax: `${reconnectMaxMs}ms`,
        extraArgs: ["--max-agent-calls", String(maxAgentCalls), "--jwt-fetch-timeout", "1s"],
      },
    });
    await fx.agent.addEntry({ id: "reader", spiffeId, selectors: [{ type: "k8s", value: "ns:jwt" }] });
    // One more volume than agent call slots: hung fetches must not hold every slot.
    for (let index = 1; index <= maxAgentCalls + 1; index++) {
      volumes.push(await fx.kubelet.publish(pod(index), "token", { "csi.spire.io/jwt-audiences": "vault" }));
    }
  });
  after(() => fx.close());

  for (const fault of [
    { name: "PermissionDenied", code: Code.PermissionDenied, message: notAuthorizedMessage, detail: /refused the driver \(PermissionDenied: caller not configured as an authorized delegate\)/ },
    { name: "Unavailable", code: Code.Unavailable, message: "agent overloaded", detail: /is not answering/ },
    { name: "Internal", code: Code.Internal, message: "datastore hiccup", detail: /^FetchJWTSVIDs failed: \[Internal\] datastore hiccup$/ },
  ]) {
    test(`FetchJWTSVIDs answering ${fault.name}: last good tokens kept, retries paced by the backoff, counted and logged`, async () => {
      const tokensBefore = await Promise.all(volumes.map(token));
      const errorsBefore = sample(await scrapeDriverMetrics(fx.driver), "spire_csi_jwt_svid_fetches_total", { result: "error" }) ?? 0;
      const callsBefore = volumes.map((_, index) => fx.agent.jwtFetchCallsByPod.get(`pod-uid:${podUid(index + 1)}`) ?? 0);
      const mark = fx.driver.logs.length;
      fx.agent.jwtFetchFault = { code: fault.code, message: fault.message };
      const failures = await waitForFailures(4, mark);
      assert.deepEqual(await Promise.all(volumes.map(token)), tokensBefore, "the last good tokens stay");
      for (const line of failures) {
        assert.equal(line.audience, "vault");
        assert.match(String(line.detail), fault.detail);
        assert.ok(Number(line.retryInMs) > 0 && Number(line.retryInMs) <= reconnectMaxMs, `retry delay ${String(line.retryInMs)} within (0, reconnect-max]`);
      }
      // The delays grow: by the fourth failure in a row a volume waits at least half the cap.
      for (const volume of volumes) {
        const fourth = failures.filter((line) => line.volumeId === volume.volumeId)[3]!;
        assert.ok(Number(fourth.retryInMs) >= reconnectMaxMs / 2, `fourth delay ${String(fourth.retryInMs)} ms: the backoff grows towards --reconnect-max`);
      }
      // Snapshot the counts while the fault holds: every call the agent saw is one logged failure
      // (plus at most the one in flight), so retries are paced by the delays logged above.
      const logged = volumes.map((volume) => fx.driver.logs.slice(mark).filter((line) => line.volumeId === volume.volumeId && line.msg === fetchFailedLog).length);
      const calls = volumes.map((_, index) => (fx.agent.jwtFetchCallsByPod.get(`pod-uid:${podUid(index + 1)}`) ?? 0) - callsBefore[index]!);
      fx.agent.jwtFetchFault = undefined;
      for (const [index, count] of calls.entries()) {
        assert.ok(count >= logged[index]! && count <= logged[index]! + 1, `volume ${index}: ${count} calls for ${logged[index]} logged failures`);
      }
      const errorsAfter = sample(await scrapeDriverMetrics(fx.driver), "spire_csi_jwt_svid_fetches_total", { result: "error" }) ?? 0;
      assert.ok(errorsAfter - errorsBefore >= failures.length, `spire_csi_jwt_svid_fetches_total{result="error"} rose by ${errorsAfter - errorsBefore}`);
      assert.ok(fx.agent.jwtFetchPeak <= maxAgentCalls, `at most ${maxAgentCalls} fetches at the agent at once, saw ${fx.agent.jwtFetchPeak}`);
      await waitForNewTokens(tokensBefore);
    });
  }

  test("FetchJWTSVIDs never answering: each call given up at --jwt-fetch-timeout, the slots freed for other pods, tokens kept", async () => {
    const tokensBefore = await Promise.all(volumes.map(token));
    const mark = fx.driver.logs.length;
    fx.agent.jwtFetchFault = "hang";
    try {
      const failures = await waitForFailures(2, mark);
      for (const line of failures) assert.match(String(line.detail), /did not answer FetchJWTSVIDs within 1000 ms \(--jwt-fetch-timeout\)/);
      assert.ok(fx.agent.jwtFetchesAbandoned >= volumes.length * 2, `the driver gave up on the hung calls (${fx.agent.jwtFetchesAbandoned})`);
      // The driver's own count: the agent may still be unwinding a call the driver already gave up
      // on when the next one arrives, so the fake's count can briefly exceed the cap by those.
      const peak = sample(await scrapeDriverMetrics(fx.driver), "spire_csi_agent_calls_in_flight_peak");
      assert.ok(peak !== undefined && peak <= maxAgentCalls, `at most ${maxAgentCalls} agent calls in flight, saw ${peak}`);
      // More hung-prone volumes than slots, yet a pod needing only an X.509-SVID still gets one.
      const other = await fx.kubelet.publish(pod(9), "plain");
      await fx.kubelet.unpublish(other);
      assert.deepEqual(await Promise.all(volumes.map(token)), tokensBefore, "the last good tokens stay");
    } finally {
      fx.agent.jwtFetchFault = undefined;
    }
    await waitForNewTokens(tokensBefore);
  });

  test("JWT bundle stream dropped: the JWKS file stays, the stream is resubscribed and counted, later changes arrive", async () => {
    const jwksBefore = await jwks(volumes[0]!);
    const reconnectsBefore = sample(await scrapeDriverMetrics(fx.driver), "spire_csi_agent_stream_reconnects_total", { stream: "jwt-bundles" }) ?? 0;
    const mark = fx.driver.logs.length;
    fx.agent.dropJwtBundleStreams(Code.Unavailable);
    await fx.driver.waitForLog((line) => line.stream === "jwt-bundles" && line.msg === "agent stream down, resubscribing", 10_000, mark);
    await waitUntil("the JWT bundle stream is reopened", async () => fx.agent.openJwtBundleStreams === 1, 10_000, 100);
    assert.equal(await jwks(volumes[0]!), jwksBefore);
    const reconnectsAfter = sample(await scrapeDriverMetrics(fx.driver), "spire_csi_agent_stream_reconnects_total", { stream: "jwt-bundles" }) ?? 0;
    assert.ok(reconnectsAfter > reconnectsBefore, "the reconnect is counted");
    const changed = JSON.stringify({ keys: [...(JSON.parse(jwksBefore) as { keys: unknown[] }).keys, { kty: "EC", kid: "next-key", crv: "P-256", x: "AA", y: "AA" }] });
    fx.agent.pushRawJwtBundles({ "spiffe://example.org": Buffer.from(changed) });
    for (const volume of volumes) {
      await waitUntil("a JWKS change after the resubscribe reaches the volume", async () => (await jwks(volume)).includes("next-key"), 10_000, 100);
    }
  });

  test("a malformed JWKS from the agent: ignored for that trust domain and logged, the last good file stays", async () => {
    const jwksBefore = await Promise.all(volumes.map(jwks));
    const rejected = async () => sample(await scrapeDriverMetrics(fx.driver), "spire_csi_rejected_bundles_total", { bundle: "jwt" }) ?? 0;
    const rejectedBefore = await rejected();
    for (const malformed of ["{not json", '{"keys":"none"}', ""]) {
      const mark = fx.driver.logs.length;
      fx.agent.pushRawJwtBundles({ "spiffe://example.org": Buffer.from(malformed) });
      const logged = await fx.driver.waitForLog((line) => line.stream === "jwt-bundles" && line.msg === "ignoring a malformed bundle from the agent", 10_000, mark);
      assert.equal(logged.trustDomain, "example.org");
      assert.deepEqual(await Promise.all(volumes.map(jwks)), jwksBefore, `after ${JSON.stringify(malformed)}`);
    }
    assert.equal((await rejected()) - rejectedBefore, 3, 'each malformed JWKS counts in spire_csi_rejected_bundles_total{bundle="jwt"}');
    // Still rotating after the bad messages.
    const tokensBefore = await Promise.all(volumes.map(token));
    await waitForNewTokens(tokensBefore);
  });
});
