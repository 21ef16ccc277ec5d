import { readFile } from "node:fs/promises";
import { z } from "zod";

/**
 * An SELinux security context `user:role:type[:level]`, where the MLS/MCS level may hold `:`,
 * `,`, `.` and `-` (e.g. `s0:c12,c345`, `s0-s0:c0.c1023`). Nothing else: the value ends up in an
 * fstab line and a mount option, so no quotes, spaces or `=` can pass.
 */
export const seLinuxContextSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9_]+:[A-Za-z0-9_]+:[A-Za-z0-9_]+(:[A-Za-z0-9_.,:-]+)?$/,
    "must be an SELinux context user:role:type[:level], e.g. system_u:object_r:container_file_t:s0, or none",
  );

/**
 * Whether the node's kernel runs SELinux (enforcing or permissive). selinuxfs is registered only
 * when SELinux is enabled at boot, and tmpfs refuses a `context=` option on a kernel without it,
 * so this decides whether the option may be passed at all.
 */
export async function seLinuxEnabled(filesystems = "/proc/filesystems"): Promise<boolean> {
  const text = await readFile(filesystems, "utf8").catch(() => "");
  return text.split("\n").some((line) => line.trim().split(/\s+/).pop() === "selinuxfs");
}
