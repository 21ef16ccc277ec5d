import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, mkdir, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Builds a small Go checker module under test/ (once per source version, cached with the other
 * peers outside the clone) and returns the binary's path.
 */
export async function buildGoChecker(moduleDir: string, name: string): Promise<string> {
  const hash = createHash("sha256");
  for (const file of ["main.go", "go.mod", "go.sum"]) hash.update(await readFile(join(moduleDir, file)));
  const cacheRoot = process.env.SPIRE_CSI_PEER_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "spire-csi-driver", "peers");
  const binary = join(cacheRoot, "bin", `${name}-${hash.digest("hex").slice(0, 12)}`);
  if (!(await access(binary).then(() => true, () => false))) {
    await mkdir(join(cacheRoot, "bin"), { recursive: true });
    await run("go", ["build", "-trimpath", "-o", binary, "."], { cwd: moduleDir, timeout: 10 * 60_000, env: { ...process.env, CGO_ENABLED: "0" } });
  }
  return binary;
}
