import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildGoChecker } from "./go-checker.js";

const run = promisify(execFile);
const goSpiffeDir = fileURLToPath(new URL("../clients/go-spiffe", import.meta.url));
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

/** One side of a go-spiffe handshake: its SVID files, the peer ID it authorizes, its bundle files by trust domain. */
export interface GoSpiffePeer {
  cert: string;
  key: string;
  authorize: string;
  bundles: Record<string, string>;
}

/**
 * test/clients/go-spiffe: go-spiffe v2 (through the Go module proxy) reading the volume's files,
 * as a Go workload handed files instead of the Workload API would. A rejection throws with
 * go-spiffe's reason.
 */
export const goSpiffe = {
  svid: (cert: string, key: string) => goSpiffeRun<{ id: string; serial: string; chainLength: number }>(["svid", cert, key]),
  bundle: (trustDomain: string, file: string) => goSpiffeRun<{ trustDomain: string; authorities: number }>(["bundle", trustDomain, file]),
  verify: (cert: string, bundles: Record<string, string>) => goSpiffeRun<{ id: string }>(["verify", cert, ...bundleArgs(bundles)]),
  mtls: (server: GoSpiffePeer, client: GoSpiffePeer) =>
    goSpiffeRun<{ serverSawClient: string; clientSawServer: string; tlsVersion: string }>(["mtls", peerSpec(server), peerSpec(client)]),
};

function bundleArgs(bundles: Record<string, string>): string[] {
  return Object.entries(bundles).map(([trustDomain, file]) => `${trustDomain}=${file}`);
}

function peerSpec(peer: GoSpiffePeer): string {
  return [peer.cert, peer.key, peer.authorize, ...bundleArgs(peer.bundles)].join(",");
}

async function goSpiffeRun<T>(args: string[]): Promise<T> {
  const binary = await buildGoChecker(goSpiffeDir, "go-spiffe-checker");
  try {
    const { stdout } = await run(binary, args, { timeout: 60_000 });
    return JSON.parse(stdout) as T;
  } catch (error) {
    throw new Error(`go-spiffe rejects: ${(error as { stderr?: string }).stderr ?? (error as Error).message}`);
  }
}
