import { randomBytes } from "node:crypto";
import { chown, lstat, mkdir, readdir, readlink, rename, rm, symlink, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { SnapshotFile } from "./snapshot-file.js";

/** The symlink whose rename publishes a snapshot, as in Kubernetes' AtomicWriter. */
const dataLink = "..data";
const dataLinkStaging = "..data_tmp";
const snapshotPrefix = "..snap-";

export interface FileOwnership {
  /** The pod's fsGroup: files become group-owned and the key group-readable, never world-readable. */
  gid?: number;
}

export function fileModes(ownership: FileOwnership): { dir: number; file: number; secret: number } {
  return ownership.gid === undefined
    ? { dir: 0o755, file: 0o644, secret: 0o644 }
    : { dir: 0o750, file: 0o640, secret: 0o640 };
}

/**
 * Writes all files of one update as one snapshot: a fresh hidden dir, then an atomic rename of
 * the `..data` symlink to point at it. The visible names are symlinks through `..data`, so every
 * reader sees either the whole old set or the whole new set. Superseded snapshot dirs stay for a
 * grace period so a reader that resolved `..data` just before a swap can finish reading.
 */
export async function writeSnapshot(targetDir: string, files: readonly SnapshotFile[], ownership: FileOwnership): Promise<void> {
  const modes = fileModes(ownership);
  const snapshotName = `${snapshotPrefix}${Date.now().toString(36).padStart(10, "0")}-${randomBytes(4).toString("hex")}`;
  const snapshotDir = join(targetDir, snapshotName);
  await mkdir(snapshotDir, { mode: modes.dir });
  try {
    if (ownership.gid !== undefined) await chown(snapshotDir, 0, ownership.gid);
    for (const file of files) {
      const path = join(snapshotDir, file.name);
      await writeFile(path, file.content, { mode: file.secret ? modes.secret : modes.file, flag: "wx" });
      if (ownership.gid !== undefined) await chown(path, 0, ownership.gid);
    }
  } catch (error) {
    // Free the space (a full tmpfs) and leave the published snapshot untouched.
    await rm(snapshotDir, { recursive: true, force: true });
    throw error;
  }

  const previous = await readLinkOrUndefined(join(targetDir, dataLink));
  const staging = join(targetDir, dataLinkStaging);
  await rm(staging, { force: true });
  await symlink(snapshotName, staging);
  await rename(staging, join(targetDir, dataLink));

  const wanted = new Set(files.map((file) => file.name));
  for (const name of wanted) {
    await ensureSymlink(join(targetDir, name), `${dataLink}/${name}`);
  }
  const entries = await readdir(targetDir);
  for (const entry of entries) {
    if (!entry.startsWith("..") && !wanted.has(entry)) await rm(join(targetDir, entry), { force: true });
  }
  for (const stale of staleSnapshots(entries, snapshotName, previous, Date.now())) {
    await rm(join(targetDir, stale), { recursive: true, force: true });
  }
}

/** How long a superseded snapshot stays for readers that resolved `..data` before the swap. */
const snapshotGraceMs = 5_000;
/** Upper bound of snapshot dirs kept, so fast updates cannot fill a small tmpfs. */
const maxSnapshots = 6;

function snapshotTime(name: string): number {
  return parseInt(name.slice(snapshotPrefix.length).split("-")[0] ?? "0", 36);
}

/**
 * Snapshots to delete: the current and the previous one always stay; an older one goes once the
 * snapshot that replaced it is older than the grace period, or when more than maxSnapshots exist
 * (oldest first). A crashed write's dir never became current and ages out the same way.
 */
export function staleSnapshots(entries: readonly string[], current: string, previous: string | undefined, nowMs: number): string[] {
  const snapshots = entries.filter((entry) => entry.startsWith(snapshotPrefix)).sort((a, b) => snapshotTime(a) - snapshotTime(b) || a.localeCompare(b));
  const stale: string[] = [];
  snapshots.forEach((name, index) => {
    if (name === current || name === previous) return;
    const successor = snapshots[index + 1];
    const replacedAt = successor ? snapshotTime(successor) : nowMs;
    const overCap = snapshots.length - stale.length > maxSnapshots;
    if (overCap || nowMs - replacedAt >= snapshotGraceMs) stale.push(name);
  });
  return stale;
}

/** Removes every file the driver wrote into the target, leaving the (now empty) dir itself. */
export async function clearSnapshots(targetDir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(targetDir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  // Visible links first, then `..data`, then the dirs, so a reader never follows a dangling link
  // into a half-deleted snapshot.
  const order = (name: string) => (name.startsWith(snapshotPrefix) ? 2 : name.startsWith("..") ? 1 : 0);
  for (const entry of entries.sort((a, b) => order(a) - order(b))) {
    await rm(join(targetDir, entry), { recursive: true, force: true });
  }
}

/** Whether the dir holds a snapshot written by this driver (its `..data` link). */
export async function hasSnapshot(targetDir: string): Promise<boolean> {
  return (await readLinkOrUndefined(join(targetDir, dataLink))) !== undefined;
}

async function ensureSymlink(path: string, target: string): Promise<void> {
  const current = await readLinkOrUndefined(path);
  if (current === target) return;
  if (current !== undefined || (await exists(path))) await unlink(path);
  await symlink(target, path);
}

async function readLinkOrUndefined(path: string): Promise<string | undefined> {
  try {
    return await readlink(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "EINVAL") return undefined;
    throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}
