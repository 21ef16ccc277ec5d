import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildGoChecker } from "./go-checker.js";

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

/** Runs test/envoy/sds-checker, which decodes an SDS file with Envoy's own API types from go-control-plane. */
export async function checkEnvoySds(file: string, certSecret: string, caSecret: string): Promise<SdsReport> {
  const binary = await buildGoChecker(checkerDir, "sds-checker");
  try {
    const { stdout } = await run(binary, [file, certSecret, caSecret]);
    return JSON.parse(stdout) as SdsReport;
  } catch (error) {
    throw new Error(`Envoy's API rejects ${file}: ${(error as { stderr?: string }).stderr ?? (error as Error).message}`);
  }
}

export interface TransportSocketReport {
  requireClientCertificate: boolean;
  certificates: { name: string; path: string; watchedDirectory: string }[];
  validationContext: { name: string; path: string; watchedDirectory: string };
}

/** Decodes a listener's `transport_socket` (YAML) strictly with Envoy's API types and validation rules. */
export async function checkEnvoyTransportSocket(yamlFile: string): Promise<TransportSocketReport> {
  const binary = await buildGoChecker(checkerDir, "sds-checker");
  try {
    const { stdout } = await run(binary, ["-transport-socket", yamlFile]);
    return JSON.parse(stdout) as TransportSocketReport;
  } catch (error) {
    throw new Error(`Envoy's API rejects ${yamlFile}: ${(error as { stderr?: string }).stderr ?? (error as Error).message}`);
  }
}
