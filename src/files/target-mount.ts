import { lstatSync } from "node:fs";
import { chmod, chown, lstat, mkdir, rmdir, statfs } from "node:fs/promises";
import { dirname } from "node:path";
import { DriverError, invalidArgument } from "../errors.js";
import { MountRunner, MountTimeoutError } from "./mount-runner.js";
import { clearSnapshots } from "./atomic-snapshot.js";
import { isMountPoint } from "./mount-table.js";

/** Shared by every volume: idle shells hold no event-loop reference and exit with the driver. */
const mountCommands = new MountRunner();

/**
 * `seLinuxContext`: the context= every tmpfs gets unless kubelet asks for one; undefined where
 * the node runs no SELinux (tmpfs refuses the option there) or the operator chose `none`.
 */
export type VolumeBacking = { kind: "tmpfs"; size: string; seLinuxContext: string | undefined } | { kind: "directory" };

/**
 * mount(8) options of a volume's tmpfs. The context= option labels the whole filesystem, so
 * files written at every rotation carry the label a confined pod may read; a relabel by kubelet
 * happens only once, before the first files, and would leave later ones with the tmpfs default.
 * kubelet's context (the pod's own, with its MCS categories) wins over the driver's default.
 */
export function tmpfsMountOptions(
  backing: Extract<VolumeBacking, { kind: "tmpfs" }>,
  mode: number,
  gid: number | undefined,
  requestedSeLinuxContext: string | undefined,
): string[] {
  const options = [`size=${backing.size}`, `mode=${mode.toString(8)}`, "nosuid", "nodev", "noexec"];
  if (gid !== undefined) options.push(`gid=${gid}`);
  // Only where the node runs SELinux: without it, tmpfs rejects the option and the mount fails.
  const context = backing.seLinuxContext === undefined ? undefined : (requestedSeLinuxContext ?? backing.seLinuxContext);
  // Quoted, as kubelet writes it: the MCS categories of a level (s0:c1,c2) hold a comma.
  if (context !== undefined) options.push(`context="${context}"`);
  return options;
}

/** statfs(2) f_type of a tmpfs (linux/magic.h TMPFS_MAGIC). */
const tmpfsMagic = 0x01021994;

/**
 * What a prepared target is: for tmpfs backing, the st_dev of the tmpfs mounted on it. A write
 * compares it with the target's current st_dev (isStillTarget), so a key is never written once
 * the tmpfs is gone (unmounted by someone else, or the dir replaced) and the files would land on
 * the node's disk.
 */
export interface PreparedTarget {
  device: number | undefined;
}

/**
 * Creates the volume's `mount` dir (kubelet only creates its parent) and, for tmpfs backing,
 * mounts a size-limited tmpfs on it so keys live in memory only. The mount is made in the host
 * mount namespace (the DaemonSet uses Bidirectional propagation), so it outlives the driver.
 */
export async function prepareTarget(
  targetPath: string,
  backing: VolumeBacking,
  gid: number | undefined,
  mountTable?: ReadonlySet<string>,
  seLinuxContext?: string,
  timeoutMs?: number,
): Promise<PreparedTarget> {
  const mode = gid === undefined ? 0o755 : 0o750;
  await requireRealDir(dirname(targetPath), "its parent dir (kubelet creates it before publishing)");
  const created = await mkdir(targetPath, { mode }).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      // A retried publish, or a re-adopted volume, finds the dir already there.
      if (error.code !== "EEXIST") throw error;
      return false;
    },
  );
  // Never follow a link planted in the pod's volume dir: files must land in the target only.
  await requireRealDir(targetPath, "the target");
  // mkdir's mode is cut by the process umask (077 on hardened nodes would lock the pod's group
  // out); the mode is set explicitly instead.
  if (created) await chmod(targetPath, mode);
  // A dir made just now cannot be a mount point; reading the mount table (one line per mount on
  // the node) is left for retries and re-adoption.
  if (backing.kind === "tmpfs" && (created || !(await isMountPoint(targetPath, mountTable)))) {
    const options = tmpfsMountOptions(backing, mode, gid, seLinuxContext);
    await mountCommands.mount({ source: "tmpfs", target: targetPath, fsType: "tmpfs", options }, timeoutMs).catch(rethrowTimeout);
  } else if (gid !== undefined) {
    await chown(targetPath, 0, gid);
  }
  if (backing.kind === "directory") return { device: undefined };
  // A mount point found on a retry or at re-adoption is only taken over if it is a tmpfs.
  if ((await statfs(targetPath)).type !== tmpfsMagic) {
    throw new DriverError("failed-precondition", `target_path: ${targetPath} is a mount point but not a tmpfs; refusing to write keys to it`);
  }
  return { device: (await lstat(targetPath)).dev };
}

/**
 * Whether the target is still the dir prepared for the volume: a real dir (no symlink) and, for
 * tmpfs backing, on the tmpfs mounted then. Synchronous: it runs right before a snapshot write.
 */
export function isStillTarget(targetPath: string, prepared: PreparedTarget): boolean {
  const info = lstatSync(targetPath, { throwIfNoEntry: false });
  if (!info?.isDirectory()) return false;
  return prepared.device === undefined || info.dev === prepared.device;
}

/**
 * The checks of prepareTarget that need no changes on disk, for publish to run before it opens
 * an agent stream: a request kubelet could not have made must cost the agent nothing.
 */
export async function checkTarget(targetPath: string): Promise<void> {
  await requireRealDir(dirname(targetPath), "its parent dir (kubelet creates it before publishing)");
  const exists = await lstat(targetPath).then(
    () => true,
    () => false,
  );
  if (exists) await requireRealDir(targetPath, "the target");
}

async function requireRealDir(path: string, what: string): Promise<void> {
  const info = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") throw invalidArgument("target_path", `${what} ${path} does not exist`);
    throw error;
  });
  if (info.isSymbolicLink() || !info.isDirectory()) {
    throw invalidArgument("target_path", `${what} ${path} must be a directory, not a symlink or file`);
  }
}

/**
 * Unmounts the target's tmpfs (if any), removes the driver's files from it, then the target dir
 * itself, which the driver created at publish (the CSI spec has the plugin remove it; kubelet
 * v1.34 tolerates either). A target that is a symlink (or not a dir) is left alone and reported:
 * unpublish must never follow a link planted at the target to unmount or empty whatever lies
 * behind it. rmdir(2) neither follows a link nor removes a mount point: a second tmpfs stacked
 * below the one just unmounted fails it with EBUSY, so kubelet's retried unpublish unmounts that
 * one too instead of an OK leaving it mounted.
 */
export async function releaseTarget(targetPath: string, timeoutMs?: number): Promise<"released" | "absent" | "not-a-dir"> {
  const info = await lstat(targetPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (!info) return "absent";
  if (!info.isDirectory()) return "not-a-dir";
  if (await isMountPoint(targetPath)) await mountCommands.unmount(targetPath, timeoutMs).catch(rethrowTimeout);
  await clearSnapshots(targetPath);
  await rmdir(targetPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
  });
  return "released";
}

/** A hung mount(8)/umount(8) is a deadline for kubelet to retry, not an internal error. */
function rethrowTimeout(error: unknown): never {
  if (error instanceof MountTimeoutError) throw new DriverError("deadline-exceeded", `${error.message}; kubelet retries`, { cause: error });
  throw error;
}
