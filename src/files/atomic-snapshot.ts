import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  fchmodSync,
  fchownSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { crashTestPause, crashTestPauseEnabled } from "../crash-test-pause.js";
import type { SnapshotFile } from "./snapshot-file.js";

/** The symlink whose rename publishes a snapshot, as in Kubernetes' AtomicWriter. */
const dataLink = "..data";
const dataLinkStaging = "..data_tmp";
const snapshotPrefix = "..snap-";
const plainFileName = /^[A-Za-z0-9._-]{1,255}$/;

export interface FileOwnership {
  /** The pod's fsGroup: files become group-owned and the key group-readable, never world-readable. */
  gid?: number;
  /** Mode of the secret files (csi.spire.io/key-mode), instead of the default for the fsGroup. */
  secretMode?: number;
}

export function fileModes(ownership: FileOwnership): { dir: number; file: number; secret: number } {
  const modes = ownership.gid === undefined ? { dir: 0o755, file: 0o644, secret: 0o644 } : { dir: 0o750, file: 0o640, secret: 0o640 };
  return { ...modes, secret: ownership.secretMode ?? modes.secret };
}

/**
 * Writes all files of one update as one snapshot: a fresh hidden dir, then an atomic rename of
 * the `..data` symlink to point at it. The visible names are symlinks through `..data`, so every
 * reader sees either the whole old set or the whole new set. Superseded snapshot dirs stay for a
 * grace period so a reader that resolved `..data` just before a swap can finish reading.
 *
 * The ~20 calls are synchronous on purpose: on the volume's tmpfs each is a few microseconds of
 * memory work, while a thread-pool round trip costs the event loop ten times that; with hundreds
 * of volumes rotating at once, async calls made the fan-out several times slower (npm run bench).
 */
export async function writeSnapshot(targetDir: string, files: readonly SnapshotFile[], ownership: FileOwnership): Promise<void> {
  const modes = fileModes(ownership);
  for (const file of files) {
    // The last line of defence for names that reach here from the agent (trust domains): a name
    // must stay one plain entry of the snapshot dir and never take a snapshot-reserved `..` name.
    if (!plainFileName.test(file.name) || file.name.startsWith("..")) throw new Error(`refusing to write a file named ${JSON.stringify(file.name.slice(0, 300))}`);
  }
  const snapshotName = `${snapshotPrefix}${Date.now().toString(36).padStart(10, "0")}-${randomBytes(4).toString("hex")}`;
  const snapshotDir = join(targetDir, snapshotName);
  mkdirSync(snapshotDir, { mode: modes.dir });
  try {
    // Modes are set explicitly after chown: the ones given to mkdir/open are cut by the process
    // umask, and under umask 077 an fsGroup pod's key would be unreadable to its group.
    if (ownership.gid !== undefined) chownSync(snapshotDir, 0, ownership.gid);
    chmodSync(snapshotDir, modes.dir);
    for (const file of files) {
      const mode = file.secret ? modes.secret : modes.file;
      const fd = openSync(join(snapshotDir, file.name), "wx", mode);
      try {
        if (ownership.gid !== undefined) fchownSync(fd, 0, ownership.gid);
        fchmodSync(fd, mode);
        writeFileSync(fd, file.content);
      } finally {
        closeSync(fd);
      }
      if (crashTestPauseEnabled("first-write") && readLinkOrUndefined(join(targetDir, dataLink)) === undefined) await crashTestPause("first-write", targetDir);
    }
  } catch (error) {
    // Free the space (a full tmpfs) and leave the published snapshot untouched.
    rmSync(snapshotDir, { recursive: true, force: true });
    throw error;
  }

  const previous = readLinkOrUndefined(join(targetDir, dataLink));
  const staging = join(targetDir, dataLinkStaging);
  try {
    symlinkSync(snapshotName, staging);
  } catch (error) {
    // Left behind by a write that crashed between its symlink and its rename.
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    rmSync(staging, { force: true });
    symlinkSync(snapshotName, staging);
  }
  renameSync(staging, join(targetDir, dataLink));

  const wanted = new Set(files.map((file) => file.name));
  for (const name of wanted) ensureSymlink(join(targetDir, name), `${dataLink}/${name}`);
  const entries = readdirSync(targetDir);
  for (const entry of entries) {
    if (!entry.startsWith("..") && !wanted.has(entry)) rmSync(join(targetDir, entry), { force: true });
  }
  for (const stale of staleSnapshots(entries, snapshotName, previous, Date.now())) {
    rmSync(join(targetDir, stale), { recursive: true, force: true });
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
  return readLinkOrUndefined(join(targetDir, dataLink)) !== undefined;
}

function ensureSymlink(path: string, target: string): void {
  const current = readLinkOrUndefined(path);
  if (current === target) return;
  if (current !== undefined || existsNoFollow(path)) unlinkSync(path);
  symlinkSync(target, path);
}

function readLinkOrUndefined(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "EINVAL") return undefined;
    throw error;
  }
}

function existsNoFollow(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
