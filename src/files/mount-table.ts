import { readFile, realpath } from "node:fs/promises";

/** Every mount point of this process's mount namespace, decoded, from /proc/self/mountinfo. */
export async function readMountPoints(): Promise<Set<string>> {
  const mountInfo = await readFile("/proc/self/mountinfo", "utf8");
  return new Set(mountInfo.split("\n").map((line) => decodeMountPath(line.split(" ")[4] ?? "")));
}

/** The path with symlinks resolved, as the mount table spells it; undefined when it does not exist. */
export async function resolvedPath(path: string): Promise<string | undefined> {
  return realpath(path).catch(() => undefined);
}

/** Whether `path` is a mount point; `table` (from readMountPoints) spares re-reading the mount table for many paths. */
export async function isMountPoint(path: string, table?: ReadonlySet<string>): Promise<boolean> {
  const resolved = await resolvedPath(path);
  return resolved !== undefined && (table ?? (await readMountPoints())).has(resolved);
}

/** mountinfo and fstab escape space, tab, newline and backslash as octal (\040 ...). */
function decodeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** The inverse of decodeMountPath, for writing an fstab field: libmount unescapes exactly these four. */
export function encodeMountField(value: string): string {
  return value.replace(/[ \t\n\\]/g, (char) => `\\${char.charCodeAt(0).toString(8).padStart(3, "0")}`);
}
