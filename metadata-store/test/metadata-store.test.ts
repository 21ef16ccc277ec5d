import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import { MetadataStore, MetadataStoreError, type VolumeRecord } from "../src/index.js";

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "meta-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return join(dir, "volumes");
}

function record(volumeId: string, overrides: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    schemaVersion: 1,
    volumeId,
    targetPath: `/var/lib/kubelet/pods/uid-${volumeId}/volumes/kubernetes.io~csi/spiffe/mount`,
    podUid: `uid-${volumeId}`,
    podName: "web-0",
    podNamespace: "demo",
    serviceAccount: "web",
    attributes: { "csi.spire.io/cert-file": "svid.pem" },
    readOnly: true,
    createdAt: "2026-11-24T10:00:00.000Z",
    ...overrides,
  };
}

function collectingLogger() {
  const warnings: { details: object; message: string }[] = [];
  return { warnings, logger: { warn: (details: object, message: string) => warnings.push({ details, message }), info: () => undefined } };
}

test("put then get and list round-trip; a new instance on the same dir sees the records", async (t) => {
  const dir = await tempDir(t);
  const store = await MetadataStore.open(dir);
  await store.put(record("csi-a"));
  await store.put(record("csi-b", { fsGroup: 2000 }));
  assert.deepEqual(await store.get("csi-a"), record("csi-a"));
  assert.equal(await store.get("csi-missing"), undefined);
  const reopened = await MetadataStore.open(dir);
  const { records, quarantined } = await reopened.list();
  assert.deepEqual(records.map((r) => r.volumeId).sort(), ["csi-a", "csi-b"]);
  assert.equal(records.find((r) => r.volumeId === "csi-b")?.fsGroup, 2000);
  assert.deepEqual(quarantined, []);
});

test("dir is 0700 (also when it existed with looser modes), records are 0600", async (t) => {
  const dir = await tempDir(t);
  await MetadataStore.open(dir);
  const { chmod } = await import("node:fs/promises");
  await chmod(dir, 0o755);
  const store = await MetadataStore.open(dir);
  await store.put(record("csi-a"));
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, "quarantine"))).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, "csi-a.json"))).mode & 0o777, 0o600);
});

test("delete is idempotent", async (t) => {
  const store = await MetadataStore.open(await tempDir(t));
  await store.put(record("csi-a"));
  await store.delete("csi-a");
  await store.delete("csi-a");
  assert.equal(await store.get("csi-a"), undefined);
  assert.deepEqual((await store.list()).records, []);
});

test("invalid records are refused on put with the field named", async (t) => {
  const store = await MetadataStore.open(await tempDir(t));
  const cases: [VolumeRecord, RegExp][] = [
    [record("csi-a", { targetPath: "relative/mount" }), /^invalid volume record: targetPath: must be an absolute path$/],
    [record("csi/../../etc"), /^invalid volume record: volumeId: must be 1-128 characters/],
    [record(".."), /^invalid volume record: volumeId: must not be \. or \.\./],
    [record("csi-a", { podNamespace: "" }), /^invalid volume record: podNamespace: must not be empty/],
    [record("csi-a", { fsGroup: -1 }), /^invalid volume record: fsGroup:/],
    [{ ...record("csi-a"), key: "secret" } as VolumeRecord, /^invalid volume record: \(record\): .*key/i],
  ];
  for (const [bad, message] of cases) {
    await assert.rejects(store.put(bad), (error: unknown) => {
      assert.ok(error instanceof MetadataStoreError);
      assert.equal(error.code, "invalid-record");
      assert.match(error.message, message);
      return true;
    });
  }
  assert.deepEqual((await readdir(store.dir)).filter((name) => name.endsWith(".json")), []);
  await assert.rejects(store.get("../x"), { code: "invalid-record" });
});

test("corrupt, truncated, unknown-version, extra-key and misnamed records are quarantined; good ones still listed", async (t) => {
  const dir = await tempDir(t);
  const { warnings, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await store.put(record("csi-good"));
  const full = JSON.stringify(record("csi-truncated"));
  await writeFile(join(dir, "csi-corrupt.json"), "{not json", { mode: 0o600 });
  await writeFile(join(dir, "csi-truncated.json"), full.slice(0, full.length / 2), { mode: 0o600 });
  await writeFile(join(dir, "csi-future.json"), JSON.stringify({ ...record("csi-future"), schemaVersion: 99 }), { mode: 0o600 });
  await writeFile(join(dir, "csi-extra.json"), JSON.stringify({ ...record("csi-extra"), surprise: true }), { mode: 0o600 });
  await writeFile(join(dir, "csi-misnamed.json"), JSON.stringify(record("csi-other")), { mode: 0o600 });

  const { records, quarantined } = await store.list();
  assert.deepEqual(records.map((r) => r.volumeId), ["csi-good"]);
  const reasons = Object.fromEntries(quarantined.map((q) => [q.file, q.reason]));
  assert.match(reasons["csi-corrupt.json"] ?? "", /^not JSON/);
  assert.match(reasons["csi-truncated.json"] ?? "", /^not JSON/);
  assert.equal(reasons["csi-future.json"], "unsupported schemaVersion 99");
  assert.match(reasons["csi-extra.json"] ?? "", /surprise/);
  assert.match(reasons["csi-misnamed.json"] ?? "", /does not match the file name/);
  assert.equal(warnings.length, 5, "each quarantine is logged");

  const moved = await readdir(join(dir, "quarantine"));
  assert.equal(moved.length, 5);
  assert.ok(moved.some((name) => name.startsWith("csi-future.json.")));
  assert.equal(await readFile(join(dir, "quarantine", moved.find((n) => n.startsWith("csi-corrupt.json."))!), "utf8"), "{not json");
  assert.deepEqual((await readdir(dir)).sort(), ["csi-good.json", "quarantine"], "only good records remain");
  assert.equal((await store.list()).quarantined.length, 0, "a second list finds nothing more to quarantine");
});

test("temp files of an interrupted write are not records; stale ones are swept", async (t) => {
  const dir = await tempDir(t);
  const store = await MetadataStore.open(dir);
  await store.put(record("csi-a"));
  await writeFile(join(dir, "csi-a.json.12345"), "{half");
  await writeFile(join(dir, "csi-b.json.67890"), "{half");
  const old = new Date(Date.now() - 10 * 60_000);
  await utimes(join(dir, "csi-b.json.67890"), old, old);
  const { records, quarantined } = await store.list();
  assert.deepEqual(records.map((r) => r.volumeId), ["csi-a"]);
  assert.deepEqual(quarantined, []);
  assert.deepEqual((await readdir(dir)).sort(), ["csi-a.json", "csi-a.json.12345", "quarantine"], "fresh temp kept (a writer may own it), stale one swept");
});

test("200 concurrent puts of different records all land", async (t) => {
  const store = await MetadataStore.open(await tempDir(t));
  await Promise.all(Array.from({ length: 200 }, (_, i) => store.put(record(`csi-${i}`))));
  const { records } = await store.list();
  assert.equal(records.length, 200);
});

test("concurrent puts to one record leave one complete record", async (t) => {
  const store = await MetadataStore.open(await tempDir(t));
  await Promise.all(Array.from({ length: 20 }, (_, i) => store.put(record("csi-a", { podName: `web-${i}` }))));
  const stored = await store.get("csi-a");
  assert.match(stored?.podName ?? "", /^web-\d+$/);
  assert.equal((await store.list()).quarantined.length, 0);
});
