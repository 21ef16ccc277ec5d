import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { shellQuote } from "../../src/files/mount-runner.js";

/**
 * mount(8)/umount(8) stand-ins that hang (as on a wedged device) for any target whose path holds
 * "hang", and hand every other target to the real commands, one fstab line at a time as mount -a
 * does. Each hung process writes its pid to `pids` first. `bin` holds them as `mount` and
 * `umount`, to go first on a driver's PATH.
 */
export async function hangingMountCommands(dir: string): Promise<{ bin: string; commands: { mount: string; umount: string }; pids: string; hungPids(): Promise<number[]> }> {
  const bin = join(dir, "fake-bin");
  await mkdir(bin);
  const pids = join(bin, "hung.pids");
  const mount = join(bin, "mount");
  const umount = join(bin, "umount");
  await writeFile(
    mount,
    `#!/bin/sh
# mount -a -T FSTAB
status=0
while IFS= read -r line; do
  case "$line" in *hang*) echo $$ >> ${shellQuote(pids)}; exec sleep 600 ;; esac
  printf '%s\\n' "$line" > "$3.one"
  /usr/bin/mount -a -T "$3.one" || status=$?
done < "$3"
exit $status
`,
  );
  await writeFile(
    umount,
    `#!/bin/sh
for target in "$@"; do
  case "$target" in *hang*) echo $$ >> ${shellQuote(pids)}; exec sleep 600 ;; esac
done
exec /usr/bin/umount "$@"
`,
  );
  await Promise.all([chmod(mount, 0o755), chmod(umount, 0o755)]);
  const hungPids = async () =>
    (await readFile(pids, "utf8").catch(() => ""))
      .split("\n")
      .filter(Boolean)
      .map(Number);
  return { bin, commands: { mount, umount }, pids, hungPids };
}
