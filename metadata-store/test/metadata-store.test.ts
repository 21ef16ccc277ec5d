import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmod, chown, mkdir, readdir, readFile, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { MetadataStore, MetadataStoreError, type VolumeRecord } from "../src/index.js";
import { collectingLogger, record, tempStoreDir } from "./helpers.js";

const kubeletId = `csi-${"ab12".repeat(16)}`;

test("put then get round-trips; list returns all; a new instance on the same dir sees the records", async (t) => {
  const dir = await tempStoreDir(t);
  const store = await MetadataStore.open(dir);
  await store.put(record(kubeletId));
  await store.put(record("csi-b", { fsGroup: 2000, readOnly: false, attributes: {} }));
  assert.deepEqual(await store.get(kubeletId), record(kubeletId));
  assert.deepEqual(await store.get("csi-b"), record("csi-b", { fsGroup: 2000, readOnly: false, attributes: {} }));
  assert.equal(await store.get("csi-missing"), undefined);

  const reopened = await MetadataStore.open(dir);
  const { records, quarantined } = await reopened.list();
  assert.deepEqual(
    records.sort((a, b) => a.volumeId.localeCompare(b.volumeId)),
    [record(kubeletId), record("csi-b", { fsGroup: 2000, readOnly: false, attributes: {} })],
  );
  assert.deepEqual(quarantined, []);
});

test("put overwrites, and the file is pretty JSON with a trailing newline", async (t) => {
  const store = await MetadataStore.open(await tempStoreDir(t));
  await store.put(record("csi-a"));
  await store.put(record("csi-a", { podName: "web-1" }));
  assert.equal((await store.get("csi-a"))?.podName, "web-1");
  const text = await readFile(join(store.dir, "csi-a.json"), "utf8");
  assert.equal(text, `${JSON.stringify(record("csi-a", { podName: "web-1" }), null, 2)}\n`);
  assert.equal((await store.list()).records.length, 1);
});

test("dir and quarantine/ are 0700 (also when they existed with looser modes), records are 0600", async (t) => {
  const dir = await tempStoreDir(t);
  await MetadataStore.open(dir);
  await chmod(dir, 0o755);
  await chmod(join(dir, "quarantine"), 0o777);
  const store = await MetadataStore.open(dir);
  await store.put(record("csi-a"));
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, "quarantine"))).mode & 0o777, 0o700);
  assert.equal((await stat(join(dir, "csi-a.json"))).mode & 0o777, 0o600);
});

test("open fails with an io MetadataStoreError when the dir cannot be created", async (t) => {
  const dir = await tempStoreDir(t);
  await mkdir(join(dir, ".."), { recursive: true });
  await writeFile(dir, "a file, not a dir");
  await assert.rejects(MetadataStore.open(dir), (error: unknown) => {
    assert.ok(error instanceof MetadataStoreError);
    assert.equal(error.code, "io");
    assert.match(error.message, /cannot prepare the metadata dir/);
    return true;
  });
});

test("delete is idempotent and durable-looking: the file is gone", async (t) => {
  const store = await MetadataStore.open(await tempStoreDir(t));
  await store.put(record("csi-a"));
  await store.put(record("csi-b"));
  await store.delete("csi-a");
  await store.delete("csi-a");
  await store.delete("csi-never-existed");
  assert.equal(await store.get("csi-a"), undefined);
  assert.deepEqual((await store.list()).records.map((r) => r.volumeId), ["csi-b"]);
  assert.deepEqual((await readdir(store.dir)).sort(), ["csi-b.json", "quarantine"]);
});

test("invalid records are refused on put with the failing field named, and nothing is written", async (t) => {
  const store = await MetadataStore.open(await tempStoreDir(t));
  const cases: [unknown, RegExp][] = [
    [record("csi-a", { targetPath: "relative/mount" }), /^invalid volume record: targetPath: must be an absolute path$/],
    [record("csi/../../etc"), /^invalid volume record: volumeId: must be 1-128 characters/],
    [record("a/b"), /^invalid volume record: volumeId: /],
    [record(".."), /^invalid volume record: volumeId: must not be \. or \.\.$/],
    [record(""), /^invalid volume record: volumeId: /],
    [record("x".repeat(129)), /^invalid volume record: volumeId: /],
    [record("csi-a", { podNamespace: "" }), /^invalid volume record: podNamespace: must not be empty$/],
    [record("csi-a", { fsGroup: -1 }), /^invalid volume record: fsGroup: must be >= 0$/],
    [record("csi-a", { fsGroup: 2 ** 31 }), /^invalid volume record: fsGroup: must be <= 2147483647$/],
    [record("csi-a", { fsGroup: 1.5 }), /^invalid volume record: fsGroup: must be an integer$/],
    [record("csi-a", { createdAt: "yesterday" }), /^invalid volume record: createdAt: must be an ISO 8601 timestamp$/],
    [{ ...record("csi-a"), attributes: { "csi.spire.io/x": 1 } }, /^invalid volume record: attributes\.csi\.spire\.io\/x: /],
    [{ ...record("csi-a"), schemaVersion: 2 }, /^invalid volume record: schemaVersion: /],
    [{ ...record("csi-a"), privateKey: "secret" }, /^invalid volume record: privateKey: unknown field$/],
    [null, /^invalid volume record: \(record\): /],
  ];
  for (const [bad, message] of cases) {
    await assert.rejects(store.put(bad as VolumeRecord), (error: unknown) => {
      assert.ok(error instanceof MetadataStoreError, `${message}: not a MetadataStoreError`);
      assert.equal(error.name, "MetadataStoreError");
      assert.equal(error.code, "invalid-record");
      assert.match(error.message, message);
      return true;
    });
  }
  assert.deepEqual(await readdir(store.dir), ["quarantine"]);
});

test("get and delete refuse ids that could escape the dir", async (t) => {
  const store = await MetadataStore.open(await tempStoreDir(t));
  for (const id of ["../x", "..", "a/b", ""]) {
    await assert.rejects(store.get(id), { name: "MetadataStoreError", code: "invalid-record", message: /^invalid volumeId / });
    await assert.rejects(store.delete(id), { name: "MetadataStoreError", code: "invalid-record" });
  }
});

test("corrupt, truncated, newer-major, garbage-version and misnamed records are quarantined; good ones still listed", async (t) => {
  const dir = await tempStoreDir(t);
  const { warnings, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await store.put(record("csi-good"));
  await store.put(record("csi-truncated"));
  const full = await readFile(join(dir, "csi-truncated.json"), "utf8");
  await writeFile(join(dir, "csi-truncated.json"), full.slice(0, Math.floor(full.length / 2)));
  await writeFile(join(dir, "csi-corrupt.json"), "{not json");
  await writeFile(join(dir, "csi-empty.json"), "");
  await writeFile(join(dir, "csi-future.json"), JSON.stringify({ ...record("csi-future"), schemaVersion: 99 }));
  await writeFile(join(dir, "csi-older.json"), JSON.stringify({ ...record("csi-older"), schemaVersion: 0 }));
  await writeFile(join(dir, "csi-misnamed.json"), JSON.stringify(record("csi-other")));
  await writeFile(join(dir, "csi-relative.json"), JSON.stringify(record("csi-relative", { targetPath: "mount" })));

  const { records, quarantined } = await store.list();
  assert.deepEqual(records, [record("csi-good")]);
  const reasons = Object.fromEntries(quarantined.map((q) => [q.file, q.reason]));
  assert.deepEqual(Object.keys(reasons).sort(), [
    "csi-corrupt.json",
    "csi-empty.json",
    "csi-future.json",
    "csi-misnamed.json",
    "csi-older.json",
    "csi-relative.json",
    "csi-truncated.json",
  ]);
  assert.match(reasons["csi-corrupt.json"] ?? "", /^not JSON/);
  assert.match(reasons["csi-truncated.json"] ?? "", /^not JSON/);
  assert.match(reasons["csi-empty.json"] ?? "", /^not JSON/);
  assert.equal(reasons["csi-future.json"], "written by a newer driver (schemaVersion 99); roll forward, or kubelet republishes after the pod restarts");
  assert.equal(reasons["csi-older.json"], "unsupported schemaVersion 0");
  assert.equal(reasons["csi-misnamed.json"], "volumeId csi-other does not match the file name");
  assert.equal(reasons["csi-relative.json"], "targetPath: must be an absolute path");

  assert.equal(warnings.length, 7, "each quarantine is logged");
  assert.ok(warnings.every((w) => w.message === "quarantined an unusable volume record"));
  assert.deepEqual(
    warnings.map((w) => (w.details as { file: string }).file).sort(),
    Object.keys(reasons).sort(),
  );

  const moved = await readdir(join(dir, "quarantine"));
  assert.equal(moved.length, 7);
  for (const file of Object.keys(reasons)) {
    assert.ok(moved.some((name) => new RegExp(`^${file.replace(".", "\\.")}\\.\\d{4}-\\d\\d-\\d\\dT`).test(name)), `${file} moved`);
  }
  const corrupt = moved.find((n) => n.startsWith("csi-corrupt.json."));
  assert.equal(await readFile(join(dir, "quarantine", corrupt ?? "missing"), "utf8"), "{not json", "content kept as evidence");
  assert.deepEqual((await readdir(dir)).sort(), ["csi-good.json", "quarantine"], "only good records remain");
  assert.deepEqual(await store.list(), { records: [record("csi-good")], quarantined: [] }, "a second list finds nothing more");
});

test("a version-1 record with fields a newer driver added is kept: known fields validated, unknown ones dropped and logged once", async (t) => {
  const dir = await tempStoreDir(t);
  const { warnings, infos, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  // What a newer driver could write, plus keys that would pollute an object if they were passed
  // along: none of them may reach the record this driver acts on.
  const written = JSON.stringify({ ...record("csi-newer"), rotationHint: "early", constructor: { readOnly: false } }).replace(
    /^\{/,
    '{"__proto__":{"readOnly":false,"polluted":true},',
  );
  await writeFile(join(dir, "csi-newer.json"), written);

  const { records, quarantined } = await store.list();
  assert.deepEqual(quarantined, []);
  assert.deepEqual(records, [record("csi-newer")], "exactly the known fields, same values");
  assert.equal(Object.getPrototypeOf(records[0]), Object.prototype);
  assert.equal((records[0] as unknown as { polluted?: unknown }).polluted, undefined);
  assert.deepEqual(infos, [
    {
      details: { file: "csi-newer.json", ignoredFields: ["__proto__", "rotationHint", "constructor"], ignoredFieldCount: 3 },
      message: "kept a volume record written by a newer driver; ignored the fields this driver does not know",
    },
  ]);
  assert.deepEqual(await store.get("csi-newer"), record("csi-newer"));
  assert.deepEqual((await store.list()).records, [record("csi-newer")]);
  assert.equal(infos.length, 1, "logged once per record, not on every read");
  assert.deepEqual(warnings, []);
  assert.equal(await readFile(join(dir, "csi-newer.json"), "utf8"), written, "reading leaves the newer driver's fields for a roll forward");

  // The driver's own write of what it read holds version 1 and only the fields it knows.
  const kept = await store.get("csi-newer");
  await store.put(kept!);
  const rewritten = JSON.parse(await readFile(join(dir, "csi-newer.json"), "utf8")) as Record<string, unknown>;
  assert.deepEqual(Object.keys(rewritten).sort(), Object.keys(record("csi-newer")).sort());
  assert.equal(rewritten.schemaVersion, 1);
});

test("unknown fields never relax the known ones, and their names are logged with a bound", async (t) => {
  const dir = await tempStoreDir(t);
  const { infos, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await writeFile(join(dir, "csi-relative.json"), JSON.stringify({ ...record("csi-relative", { targetPath: "mount" }), addedLater: 1 }));
  const many = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`${"f".repeat(200)}${i}`, i]));
  await writeFile(join(dir, "csi-many.json"), JSON.stringify({ ...record("csi-many"), ...many }));

  const { records, quarantined } = await store.list();
  assert.deepEqual(records, [record("csi-many")]);
  assert.deepEqual(quarantined, [{ file: "csi-relative.json", reason: "targetPath: must be an absolute path" }]);
  assert.equal(infos.length, 1);
  const details = infos[0]!.details as { ignoredFields: string[]; ignoredFieldCount: number };
  assert.equal(details.ignoredFieldCount, 40);
  assert.equal(details.ignoredFields.length, 16);
  assert.ok(details.ignoredFields.every((name) => name === "f".repeat(64)));
});

test("get of a corrupt record quarantines it and returns undefined", async (t) => {
  const dir = await tempStoreDir(t);
  const { warnings, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await writeFile(join(dir, "csi-a.json"), '{"schemaVersion": 1, "volumeId": "csi-a"');
  assert.equal(await store.get("csi-a"), undefined);
  assert.equal(warnings.length, 1);
  assert.deepEqual(await readdir(dir).then((names) => names.sort()), ["quarantine"]);
  assert.equal((await readdir(join(dir, "quarantine"))).length, 1);
  await store.put(record("csi-a"));
  assert.deepEqual(await store.get("csi-a"), record("csi-a"), "the volume can be recorded again");
});

test("a record quarantined twice in quick succession keeps both copies", async (t) => {
  const dir = await tempStoreDir(t);
  const store = await MetadataStore.open(dir);
  await writeFile(join(dir, "csi-a.json"), "first");
  await store.list();
  await writeFile(join(dir, "csi-a.json"), "second");
  await store.list();
  const moved = await readdir(join(dir, "quarantine"));
  assert.equal(moved.length, 2);
  const contents = await Promise.all(moved.map((name) => readFile(join(dir, "quarantine", name), "utf8")));
  assert.deepEqual(contents.sort(), ["first", "second"]);
});

test("symlinks named *.json are quarantined, never followed; directories and other files are ignored", async (t) => {
  const dir = await tempStoreDir(t);
  const store = await MetadataStore.open(dir);
  await store.put(record("csi-a"));
  const outside = join(dir, "..", "outside.json");
  await writeFile(outside, JSON.stringify(record("csi-link")));
  await symlink(outside, join(dir, "csi-link.json"));
  await mkdir(join(dir, "csi-dir.json"));
  await mkdir(join(dir, "some-subdir"));
  await writeFile(join(dir, "README"), "operator notes");

  const { records, quarantined } = await store.list();
  assert.deepEqual(records.map((r) => r.volumeId), ["csi-a"]);
  assert.deepEqual(quarantined, [{ file: "csi-link.json", reason: "a symbolic link, not a regular file" }]);
  assert.equal(await readFile(outside, "utf8"), JSON.stringify(record("csi-link")), "the link target is untouched");
  assert.deepEqual((await readdir(dir)).sort(), ["README", "csi-a.json", "csi-dir.json", "quarantine", "some-subdir"]);
  assert.equal(await store.get("csi-dir"), undefined);
});

test("a FIFO, a socket, an oversized and an unreadable *.json are quarantined without blocking the list", { timeout: 30_000 }, async (t) => {
  const dir = await tempStoreDir(t);
  const { warnings, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await store.put(record("csi-a"));
  // A FIFO without a writer: a blocking open would wait forever and the driver would never start.
  execFileSync("mkfifo", [join(dir, "csi-fifo.json")]);
  const socketServer = createServer();
  await new Promise<void>((resolve) => socketServer.listen(join(dir, "csi-socket.json"), resolve));
  t.after(() => new Promise<void>((resolve) => socketServer.close(() => resolve())));
  // Valid JSON padded past the limit: refused for its size, not for its content.
  const big = JSON.stringify(record("csi-big"), null, 2) + " ".repeat(64 * 1024);
  await writeFile(join(dir, "csi-big.json"), big);
  await writeFile(join(dir, "csi-locked.json"), JSON.stringify(record("csi-locked")), { mode: 0o000 });
  await chmod(join(dir, "csi-locked.json"), 0o000);

  const { records, quarantined } = await asUnprivileged(dir, () => store.list());
  assert.deepEqual(records.map((r) => r.volumeId), ["csi-a"]);
  assert.deepEqual(quarantined, [
    { file: "csi-big.json", reason: `larger than 65536 bytes (${Buffer.byteLength(big)})` },
    { file: "csi-fifo.json", reason: "not a regular file" },
    { file: "csi-locked.json", reason: "unreadable (EACCES)" },
    { file: "csi-socket.json", reason: "unreadable (ENXIO)" },
  ]);
  const moved = (await readdir(join(dir, "quarantine"))).map((name) => name.replace(/\.json\..*$/, ".json")).sort();
  assert.deepEqual(moved, ["csi-big.json", "csi-fifo.json", "csi-locked.json", "csi-socket.json"]);
  assert.equal(warnings.length, 4);
});

test("write-file-atomic temp files are never records; only stale ones are swept", async (t) => {
  const dir = await tempStoreDir(t);
  const { infos, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await store.put(record("csi-a"));
  await writeFile(join(dir, "csi-a.json.12345"), JSON.stringify(record("csi-a", { podName: "half" })).slice(0, 20));
  await writeFile(join(dir, "csi-b.json.3735928559"), JSON.stringify(record("csi-b")));
  const old = new Date(Date.now() - 10 * 60_000);
  await utimes(join(dir, "csi-b.json.3735928559"), old, old);

  const { records, quarantined } = await store.list();
  assert.deepEqual(records, [record("csi-a")], "neither temp file is listed, even a complete one");
  assert.deepEqual(quarantined, []);
  assert.deepEqual((await readdir(dir)).sort(), ["csi-a.json", "csi-a.json.12345", "quarantine"], "fresh temp kept (a writer may own it), stale one swept");
  assert.deepEqual(await readdir(join(dir, "quarantine")), []);
  assert.equal(infos.length, 1);
});

test("200 concurrent puts of different records all land", async (t) => {
  const dir = await tempStoreDir(t);
  const store = await MetadataStore.open(dir);
  await Promise.all(Array.from({ length: 200 }, (_, i) => store.put(record(`csi-${i}`, { fsGroup: i }))));
  const { records, quarantined } = await (await MetadataStore.open(dir)).list();
  assert.equal(records.length, 200);
  assert.deepEqual(quarantined, []);
  assert.deepEqual(new Set(records.map((r) => r.fsGroup)), new Set(Array.from({ length: 200 }, (_, i) => i)));
  assert.equal((await readdir(dir)).length, 201, "200 records + quarantine/, no temp files left");
});

test("concurrent puts to one record leave the last one, complete", async (t) => {
  const store = await MetadataStore.open(await tempStoreDir(t));
  await Promise.all(Array.from({ length: 20 }, (_, i) => store.put(record("csi-a", { podName: `web-${i}` }))));
  assert.equal((await store.get("csi-a"))?.podName, "web-19");
  assert.deepEqual((await store.list()).quarantined, []);
});

test("concurrent put and delete of one id: the last call wins", async (t) => {
  const dir = await tempStoreDir(t);
  const store = await MetadataStore.open(dir);
  const other = await MetadataStore.open(dir);

  await Promise.all([store.put(record("csi-a")), store.delete("csi-a")]);
  assert.equal(await store.get("csi-a"), undefined, "put then delete: gone");

  await Promise.all([store.delete("csi-a"), store.put(record("csi-a"))]);
  assert.deepEqual(await store.get("csi-a"), record("csi-a"), "delete then put: present");

  await Promise.all([store.put(record("csi-b")), other.delete("csi-b")]);
  assert.equal(await other.get("csi-b"), undefined, "also across two instances on the same dir");

  for (let round = 0; round < 10; round++) {
    const ops = Array.from({ length: 30 }, (): "put" | "delete" => (Math.random() < 0.5 ? "put" : "delete"));
    await Promise.all(ops.map((op, i) => (op === "put" ? store.put(record("csi-c", { podName: `web-${i}` })) : store.delete("csi-c"))));
    const last = ops.lastIndexOf("put") === ops.length - 1 ? `web-${ops.length - 1}` : undefined;
    assert.equal((await store.get("csi-c"))?.podName, last, `round ${round}: ${ops.join(",")}`);
  }
  assert.deepEqual((await store.list()).quarantined, []);
});

/**
 * Runs `job` so that file permissions apply: root reads any file whatever its mode, so as root the
 * store dir and its entries are handed to "nobody" and the effective uid switched to it for the
 * duration of `job`.
 */
async function asUnprivileged<T>(dir: string, job: () => Promise<T>): Promise<T> {
  if (process.getuid?.() !== 0 || process.seteuid === undefined) return await job();
  const nobody = 65534;
  await chmod(dirname(dir), 0o711);
  // A mode-000 file is unreadable to its owner too, so every entry can be handed over.
  for (const name of ["", ...(await readdir(dir))]) await chown(join(dir, name), nobody, nobody);
  process.seteuid(nobody);
  try {
    return await job();
  } finally {
    process.seteuid(0);
  }
}

test("quarantineRecord moves a valid record its user refuses to quarantine/ with the reason; a missing one is fine", async (t) => {
  const dir = await tempStoreDir(t);
  const { warnings, logger } = collectingLogger();
  const store = await MetadataStore.open(dir, { logger });
  await store.put(record("csi-a"));
  await store.put(record("csi-b"));
  await store.quarantineRecord("csi-a", "fails the publish rules: target_path: must lie under /var/lib/kubelet/pods/x/");
  await store.quarantineRecord("csi-missing", "gone already");
  assert.deepEqual((await store.list()).records.map((r) => r.volumeId), ["csi-b"]);
  const moved = await readdir(join(dir, "quarantine"));
  assert.equal(moved.length, 1);
  assert.match(moved[0]!, /^csi-a\.json\.\d{4}-/);
  assert.deepEqual(JSON.parse(await readFile(join(dir, "quarantine", moved[0]!), "utf8")), record("csi-a"), "moved unchanged, for the operator to inspect");
  assert.match(String((warnings[0]?.details as { reason?: string }).reason), /fails the publish rules/);
  await assert.rejects(store.quarantineRecord("../x", "escape"), MetadataStoreError);
});
