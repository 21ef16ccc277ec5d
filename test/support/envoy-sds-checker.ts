import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, mkdir, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const checkerDir = fileURLToPath(new URL("../envoy/sds-checker", import.meta.url));

export interface SdsReport {
  certSecret: string;
  caSecret: string;
  leafUris: string[];
  leafSerial: string;
  chainLength: number;
  validator: "spiffe" | "trusted-ca";
  /** All CA certificates of the validation context. */
  trustedCas: number;
  /** With the SPIFFE validator: CA certificates per trust domain. */
  trustDomains?: Record<string, number>;
  keyMatchesLeaf: boolean;
}

/**
 * Builds (once per source version, cached outside the clone) and runs test/envoy/sds-checker,
 * which decodes an SDS file with Envoy's own API types from go-control-plane.
 */
export async function checkEnvoySds(file: string, certSecret: string, caSecret: string): Promise<SdsReport> {
  const hash = createHash("sha256");
  for (const name of ["main.go", "go.mod", "go.sum"]) hash.update(await readFile(join(checkerDir, name)));
  const cacheRoot = process.env.SPIRE_CSI_PEER_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "spire-csi-driver", "peers");
  const binary = join(cacheRoot, "bin", `sds-checker-${hash.digest("hex").slice(0, 12)}`);
  if (!(await access(binary).then(() => true, () => false))) {
    await mkdir(join(cacheRoot, "bin"), { recursive: true });
    await run("go", ["build", "-trimpath", "-o", binary, "."], { cwd: checkerDir, timeout: 10 * 60_000, env: { ...process.env, CGO_ENABLED: "0" } });
  }
  try {
    const { stdout } = await run(binary, [file, certSecret, caSecret]);
    return JSON.parse(stdout) as SdsReport;
  } catch (error) {
    throw new Error(`Envoy's API rejects ${file}: ${(error as { stderr?: string }).stderr ?? (error as Error).message}`);
  }
}
