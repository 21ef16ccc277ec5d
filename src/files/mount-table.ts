import { lstat, readFile, realpath } from "node:fs/promises";
import { dirname } from "node:path";

/** Every mount point of this process's mount namespace, decoded, from /proc/self/mountinfo. */
export async function readMountPoints(): Promise<Set<string>> {
  const mountInfo = await readFile("/proc/self/mountinfo", "utf8");
  return new Set(mountInfo.split("\n").map((line) => decodeMountPath(line.split(" ")[4] ?? "")));
}

/** The path with symlinks resolved, as the mount table spells it; undefined when it does not exist. */
export async function resolvedPath(path: string): Promise<string | undefined> {
  return realpath(path).catch(() => undefined);
}

/**
 * Whether `path` is a mount point; `table` (from readMountPoints) spares re-reading the mount
 * table for many paths. Without one, a dir on another device than its parent is taken as a mount
 * point without reading the table: that is a volume's tmpfs at every unpublish, and the table has
 * a line per mount on the node (unpublishing 250 volumes read it 250 times, O(n²) in a burst).
 * The same device proves nothing (a bind mount within one filesystem), so then the table decides.
 * A different device that is no mount (a btrfs subvolume) costs a umount that the mount runner,
 * which reads outcomes from the table, settles as done.
 */
export async function isMountPoint(path: string, table?: ReadonlySet<string>): Promise<boolean> {
  const resolved = await resolvedPath(path);
  if (resolved === undefined) return false;
  if (table) return table.has(resolved);
  const devices = await Promise.all([lstat(resolved), lstat(dirname(resolved))]).then(
    ([self, parent]) => ({ self: self.dev, parent: parent.dev }),
    () => undefined,
  );
  if (devices && devices.self !== devices.parent) return true;
  return (await readMountPoints()).has(resolved);
}

/** mountinfo and fstab escape space, tab, newline and backslash as octal (\040 ...). */
function decodeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** The inverse of decodeMountPath, for writing an fstab field: libmount unescapes exactly these four. */
export function encodeMountField(value: string): string {
  return value.replace(/[ \t\n\\]/g, (char) => `\\${char.charCodeAt(0).toString(8).padStart(3, "0")}`);
}
