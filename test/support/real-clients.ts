import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const javaSource = fileURLToPath(new URL("../clients/java/MutualTls.java", import.meta.url));

export interface JavaHandshake {
  protocol: string;
  reply: string;
  serverGot: string;
  serverSawClient: string;
  clientSawServer: string;
  /** Upper-case hex, no leading zeros. */
  serverSerial: string;
}

/** The JDK on this machine: `javac` compiles test/clients/java once into a temp dir. */
export class JavaClient {
  private constructor(private readonly classDir: string) {}

  static async compile(): Promise<JavaClient> {
    const classDir = await mkdtemp(join(tmpdir(), "java-mtls-"));
    await run("javac", ["-d", classDir, javaSource], { timeout: 120_000 });
    return new JavaClient(classDir);
  }

  /** One TLS 1.3 mutual handshake between two volumes' keystore.p12/truststore.p12 (each JVM run loads the files afresh). */
  async mutualTls(server: { dir: string; password: string }, client: { dir: string; password: string }): Promise<JavaHandshake> {
    try {
      const { stdout } = await run("java", ["-cp", this.classDir, "MutualTls", server.dir, server.password, client.dir, client.password], { timeout: 60_000 });
      return JSON.parse(stdout) as JavaHandshake;
    } catch (error) {
      throw new Error(`Java handshake failed: ${(error as { stderr?: string }).stderr ?? (error as Error).message}`);
    }
  }

  /** `keytool -list` of a PKCS#12 file: alias and entry type of each entry. */
  static async keytoolList(file: string, password: string): Promise<{ alias: string; type: string }[]> {
    const { stdout } = await run("keytool", ["-list", "-keystore", file, "-storetype", "PKCS12", "-storepass", password], { timeout: 60_000 });
    return [...stdout.matchAll(/^(\S+), [^,]+, [^,]+, (PrivateKeyEntry|trustedCertEntry),/gm)].map((match) => ({ alias: match[1]!, type: match[2]! }));
  }

  dispose(): Promise<void> {
    return rm(this.classDir, { recursive: true, force: true });
  }
}

/** `openssl pkcs12 -info -noout`: its report (MAC, bag and encryption lines), or a thrown error. */
export async function opensslPkcs12Info(file: string, password: string): Promise<string> {
  const { stdout, stderr } = await run("openssl", ["pkcs12", "-info", "-noout", "-in", file, "-passin", `pass:${password}`]);
  return stdout + stderr;
}

/**
 * `openssl verify` of a leaf against a bundle file, with the chain's intermediates as untrusted
 * helpers and `-x509_strict`. Returns openssl's output ("<file>: OK") or throws with its error.
 */
export async function opensslVerify(chainPem: string, bundleFile: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ossl-verify-"));
  try {
    const blocks = chainPem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----\n/g) ?? [];
    await writeFile(join(dir, "leaf.pem"), blocks[0] ?? "");
    const args = ["verify", "-x509_strict", "-CAfile", bundleFile];
    if (blocks.length > 1) {
      await writeFile(join(dir, "untrusted.pem"), blocks.slice(1).join(""));
      args.push("-untrusted", join(dir, "untrusted.pem"));
    }
    const { stdout } = await run("openssl", [...args, join(dir, "leaf.pem")]);
    return stdout;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
