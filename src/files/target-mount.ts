import { chown, lstat, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { invalidArgument } from "../errors.js";
import { MountRunner } from "./mount-runner.js";
import { isMountPoint } from "./mount-table.js";

/** Shared by every volume: idle shells hold no event-loop reference and exit with the driver. */
const mountCommands = new MountRunner();

export type VolumeBacking = { kind: "tmpfs"; size: string } | { kind: "directory" };

/**
 * Creates the volume's `mount` dir (kubelet only creates its parent) and, for tmpfs backing,
 * mounts a size-limited tmpfs on it so keys live in memory only. The mount is made in the host
 * mount namespace (the DaemonSet uses Bidirectional propagation), so it outlives the driver.
 */
export async function prepareTarget(targetPath: string, backing: VolumeBacking, gid: number | undefined, mountTable?: ReadonlySet<string>): Promise<void> {
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
    const options = [`size=${backing.size}`, `mode=${mode.toString(8)}`, "nosuid", "nodev", "noexec"];
    if (gid !== undefined) options.push(`gid=${gid}`);
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
