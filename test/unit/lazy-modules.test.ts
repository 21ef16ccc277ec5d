import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/**
 * A resolve hook that reports every module URL the process resolves on stderr. Hooks run on their
 * own thread (Node 24 and 20 alike), so a marker written by the main thread can overtake their
 * lines: the marker is an import of `probe-marker:<text>`, which the hook itself reports in order.
 */
const resolveProbe = `data:text/javascript,${encodeURIComponent(
  `import { register } from "node:module";
  register("data:text/javascript," + encodeURIComponent('export async function resolve(specifier, context, next) { if (specifier.startsWith("probe-marker:")) { process.stderr.write("--- " + specifier.slice(13) + "\\\\n"); return { url: "data:text/javascript,", shortCircuit: true }; } const result = await next(specifier, context); process.stderr.write("resolved " + result.url + "\\\\n"); return result; }'));`,
)}`;

/** Modules that only keystore volumes need: the PKCS#12 writer and its ASN.1 libraries. */
const keystoreOnly = /\/src\/files\/pkcs12\.|\/node_modules\/(@peculiar\/asn1-|asn1js\/)/;

test("the driver loads the PKCS#12 writer and its ASN.1 libraries only when a keystore volume needs them", async () => {
  const script = `
    await import("./src/driver.ts");
    const { loadPkcs12Writers } = await import("./src/files/volume-files.ts");
    await import("probe-marker:first keystore volume");
    await loadPkcs12Writers();
  `;
  const { stderr } = await promisify(execFile)(process.execPath, ["--import", "tsx", "--import", resolveProbe, "--input-type=module", "-e", script], { cwd: repoRoot, maxBuffer: 16 * 1024 * 1024 });
  const lines = stderr.split("\n");
  const marker = lines.indexOf("--- first keystore volume");
  assert.ok(marker > 0, "the script ran to the keystore volume");
  const resolved = (from: number, to: number) => lines.slice(from, to).filter((line) => line.startsWith("resolved ")).map((line) => line.slice("resolved ".length));
  assert.ok(resolved(0, marker).some((url) => url.endsWith("/src/driver.ts")), "the probe sees the driver's modules");
  assert.deepEqual(resolved(0, marker).filter((url) => keystoreOnly.test(url)), []);
  const afterwards = resolved(marker, lines.length).filter((url) => keystoreOnly.test(url));
  assert.ok(afterwards.some((url) => url.includes("/src/files/pkcs12.")), "loaded for the first keystore volume");
  assert.ok(afterwards.some((url) => url.includes("@peculiar/asn1-pfx")));
});
