import assert from "node:assert/strict";
import { lstat, mkdtemp, readFile, readdir, readlink, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { clearSnapshots, hasSnapshot, staleSnapshots, writeSnapshot } from "../../src/files/atomic-snapshot.js";

async function tempTarget(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "snap-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const files = (tag: string) => [
  { name: "tls.crt", content: `cert-${tag}`, secret: false },
  { name: "tls.key", content: `key-${tag}`, secret: true },
];

test("files are symlinks through ..data into one snapshot dir", async (t) => {
  const dir = await tempTarget(t);
  await writeSnapshot(dir, files("1"), {});
  assert.equal(await readlink(join(dir, "tls.crt")), "..data/tls.crt");
  assert.equal(await readFile(join(dir, "tls.key"), "utf8"), "key-1");
  const data = await readlink(join(dir, "..data"));
  assert.match(data, /^\.\.snap-/);
  assert.ok((await lstat(join(dir, "..data"))).isSymbolicLink());
  assert.equal(await hasSnapshot(dir), true);
});

test("a new snapshot swaps all files together; superseded dirs stay for readers mid-swap", async (t) => {
  const dir = await tempTarget(t);
  await writeSnapshot(dir, files("1"), {});
  const first = await readlink(join(dir, "..data"));
  await writeSnapshot(dir, files("2"), {});
  const second = await readlink(join(dir, "..data"));
  assert.notEqual(first, second);
  assert.equal(await readFile(join(dir, "tls.crt"), "utf8"), "cert-2");
  assert.equal(await readFile(join(dir, "tls.key"), "utf8"), "key-2");
  await writeSnapshot(dir, files("3"), {});
  const snapshots = (await readdir(dir)).filter((name) => name.startsWith("..snap-"));
  assert.ok(snapshots.includes(second) && snapshots.includes(first), "recently superseded snapshots are kept");
  for (let i = 4; i < 12; i++) await writeSnapshot(dir, files(String(i)), {});
  assert.ok((await readdir(dir)).filter((name) => name.startsWith("..snap-")).length <= 6, "never more than the cap");
});

test("stale snapshots: current and previous always stay; older ones go after the grace period or over the cap", () => {
  const name = (ms: number, tag = "aa") => `..snap-${ms.toString(36).padStart(10, "0")}-${tag}`;
  const entries = [name(1000), name(2000), name(3000), name(9000), "..data", "tls.crt"];
  assert.deepEqual(staleSnapshots(entries, name(9000), name(3000), 9500), [name(1000), name(2000)], "replaced 7.5 s and 6.5 s ago");
  assert.deepEqual(staleSnapshots(entries, name(9000), name(3000), 6000), [], "all within the grace period");
  const many = Array.from({ length: 10 }, (_, i) => name(100_000 + i));
  assert.deepEqual(staleSnapshots(many, many[9]!, many[8]!, 100_010), many.slice(0, 4), "over the cap: oldest first");
});

test("files that leave the set disappear; leftovers of a crashed write are swept", async (t) => {
  const dir = await tempTarget(t);
  await writeSnapshot(dir, [...files("1"), { name: "extra.pem", content: "x", secret: false }], {});
  await writeSnapshot(dir, files("2"), {});
  assert.deepEqual((await readdir(dir)).filter((name) => !name.startsWith("..")).sort(), ["tls.crt", "tls.key"]);
});

test("modes without fsGroup: 0644 files in a 0755 dir; with fsGroup: group-owned 0640, not world-readable", async (t) => {
  const dir = await tempTarget(t);
  await writeSnapshot(dir, files("1"), {});
  assert.equal((await stat(join(dir, "tls.key"))).mode & 0o777, 0o644);
  assert.equal((await stat(join(dir, "..data"))).mode & 0o777, 0o755);
  const grouped = await tempTarget(t);
  await writeSnapshot(grouped, files("1"), { gid: 4321 });
  const key = await stat(join(grouped, "tls.key"));
  assert.equal(key.mode & 0o777, 0o640);
  assert.equal(key.gid, 4321);
  assert.equal(key.mode & 0o007, 0, "key is not world-readable");
  assert.equal((await stat(join(grouped, "..data"))).gid, 4321);
});

test("clearSnapshots empties the target but keeps the dir (kubelet removes it with rmdir)", async (t) => {
  const dir = await tempTarget(t);
  await writeSnapshot(dir, files("1"), {});
  await writeSnapshot(dir, files("2"), {});
  await clearSnapshots(dir);
  assert.deepEqual(await readdir(dir), []);
  await clearSnapshots(join(dir, "missing"));
});

test("under umask 077 the modes are still exact: an fsGroup key stays 0640 in a 0750 dir", async (t) => {
  const dir = await tempTarget(t);
  const previous = process.umask(0o077);
  try {
    await writeSnapshot(dir, files("1"), { gid: 4321 });
  } finally {
    process.umask(previous);
  }
  assert.equal((await stat(join(dir, "tls.key"))).mode & 0o777, 0o640);
  assert.equal((await stat(join(dir, "tls.crt"))).mode & 0o777, 0o640);
  assert.equal((await stat(join(dir, "..data"))).mode & 0o777, 0o750);
});

test("a file name that is not one plain entry (from a hostile trust domain name) is refused before anything is written", async (t) => {
  const dir = await tempTarget(t);
  for (const name of ["../evil.trust-bundle.pem", "a/b.pem", "..data", "..x.trust-bundle.pem", ""]) {
    await assert.rejects(writeSnapshot(dir, [...files("1"), { name, content: "x", secret: false }], {}), /refusing to write a file named/);
  }
  assert.deepEqual(await readdir(dir), []);
});
