import { chown, lstat, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { invalidArgument } from "../errors.js";
import { MountRunner } from "./mount-runner.js";
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
): Promise<void> {
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
  // A dir made just now cannot be a mount point; reading the mount table (one line per mount on
  // the node) is left for retries and re-adoption.
  if (backing.kind === "tmpfs" && (created || !(await isMountPoint(targetPath, mountTable)))) {
    const options = tmpfsMountOptions(backing, mode, gid, seLinuxContext);
    await mountCommands.mount({ source: "tmpfs", target: targetPath, fsType: "tmpfs", options });
  } else if (gid !== undefined) {
    await chown(targetPath, 0, gid);
  }
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

/** Unmounts the volume's tmpfs if there is one; the caller clears a plain dir. */
export async function unmountTarget(targetPath: string): Promise<void> {
  if (await isMountPoint(targetPath)) await mountCommands.unmount(targetPath);
}
