import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { checkEnvoyTransportSocket } from "../support/envoy-sds-checker.js";

const readme = fileURLToPath(new URL("../../README.md", import.meta.url));

/** The README's yaml block whose first line starts with `marker`. */
async function readmeBlock(marker: string): Promise<string> {
  const text = await readFile(readme, "utf8");
  const block = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((match) => match[1]!).find((body) => body.startsWith(marker));
  assert.ok(block, `README has a yaml block starting with ${marker}`);
  return block;
}

test("the README's Envoy transport_socket decodes strictly with Envoy's API types and reads the secrets the README's pod asks for", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "readme-envoy-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, "transport-socket.yaml");
  await writeFile(file, await readmeBlock("# Envoy: a listener's downstream TLS context"));
  const report = await checkEnvoyTransportSocket(file);

  const pod = await readmeBlock("  volumes:\n    - name: spiffe\n      csi:\n        driver: csi.spire.io\n        readOnly: true\n        volumeAttributes:\n          csi.spire.io/envoy-sds");
  const attribute = (key: string) => new RegExp(`csi\\.spire\\.io/${key}: (\\S+)`).exec(pod)?.[1];
  const sdsFile = "/var/run/spiffe/envoy-sds.json";
  assert.equal(report.requireClientCertificate, true);
  assert.deepEqual(report.certificates, [{ name: attribute("envoy-cert-secret"), path: sdsFile, watchedDirectory: "/var/run/spiffe" }]);
  assert.deepEqual(report.validationContext, { name: attribute("envoy-ca-secret"), path: sdsFile, watchedDirectory: "/var/run/spiffe" });
});
