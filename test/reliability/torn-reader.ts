/**
 * Child process (so reads run in parallel with the driver and the agent): reads volumes' files in a tight loop while the main thread drives rotations, and
 * reports how many reads were consistent. "snapshot" volumes resolve `..data` once per read and
 * read every file from that one snapshot dir (the documented way to read several files); "naive"
 * reads the visible names one after another (counted, not asserted: any multi-file format can
 * tear that way); "single" reads one self-contained file (credential bundle, Envoy SDS).
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFile, realpath } from "node:fs/promises";
import { join } from "node:path";
import { checkIdentity, pemBlocks } from "../support/identity-files.js";
import type { TornReaderTarget } from "../support/torn-reader-process.js";

/**
 * Every read proves the key belongs to the leaf and the leaf's issuer is in the bundle; every
 * 50th read also verifies the signatures (the full check is the slow part).
 */
function check(certPem: string, keyPem: string, bundlePem: string): void {
  if (++checks % 50 === 0) {
    checkIdentity(certPem, keyPem, bundlePem);
    return;
  }
  const leaf = new X509Certificate(pemBlocks(certPem)[0]!.der);
  if (!leaf.checkPrivateKey(createPrivateKey({ key: pemBlocks(keyPem)[0]!.der, format: "der", type: "pkcs8" }))) {
    throw new Error("key does not match the leaf certificate");
  }
  if (!pemBlocks(bundlePem).some((block) => new X509Certificate(block.der).subject === leaf.issuer)) {
    throw new Error("the leaf's issuer is not in the bundle");
  }
}
let checks = 0;

type Target = TornReaderTarget;

const targets = JSON.parse(process.argv[2]!) as Target[];
const counts = { reads: 0, mismatches: 0, missing: 0, naiveReads: 0, naiveTears: 0, errors: [] as string[] };
let stop = false;
process.on("message", (message) => {
  if (message === "stop") stop = true;
});
// The test runner died: nobody will ask for the counts.
process.on("disconnect", () => process.exit(1));

async function readOnce(target: Target): Promise<void> {
  switch (target.kind) {
    case "snapshot": {
      const snapshot = await realpath(join(target.dir, "..data"));
      const [cert, key, ca] = await Promise.all(["tls.crt", "tls.key", "ca.crt"].map((name) => readFile(join(snapshot, name), "utf8")));
      check(cert!, key!, ca!);
      return;
    }
    case "naive": {
      const cert = await readFile(join(target.dir, "tls.crt"), "utf8");
      const key = await readFile(join(target.dir, "tls.key"), "utf8");
      const ca = await readFile(join(target.dir, "ca.crt"), "utf8");
      check(cert, key, ca);
      return;
    }
    case "spiffe-fs": {
      const credential = await readFile(join(target.dir, "credential-bundle.pem"), "utf8");
      const bundle = await readFile(join(target.dir, "example.org.trust-bundle.pem"), "utf8");
      const split = credential.indexOf("-----BEGIN CERTIFICATE-----");
      check(credential.slice(split), credential.slice(0, split), bundle);
      return;
    }
    case "envoy-sds": {
      const sds = JSON.parse(await readFile(join(target.dir, "envoy-sds.json"), "utf8")) as {
        resources: {
          tls_certificate?: { certificate_chain: { inline_string: string }; private_key: { inline_string: string } };
          validation_context?: { custom_validator_config: { typed_config: { trust_domains: { trust_bundle: { inline_string: string } }[] } } };
        }[];
      };
      const tls = sds.resources[0]!.tls_certificate!;
      // The SPIFFE validator lists the own trust domain first.
      const own = sds.resources[1]!.validation_context!.custom_validator_config.typed_config.trust_domains[0]!.trust_bundle.inline_string;
      check(tls.certificate_chain.inline_string, tls.private_key.inline_string, own);
      return;
    }
  }
}

while (!stop) {
  if (counts.reads % 2000 < targets.length) process.send!({ progress: counts.reads });
  for (const target of targets) {
    try {
      await readOnce(target);
      if (target.kind === "naive") counts.naiveReads += 1;
      else counts.reads += 1;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (target.kind === "naive") {
        counts.naiveReads += 1;
        counts.naiveTears += 1;
      } else if (code === "ENOENT") {
        counts.missing += 1;
        counts.reads += 1;
      } else {
        counts.mismatches += 1;
        counts.reads += 1;
        if (counts.errors.length < 5) counts.errors.push(`${target.kind}: ${(error as Error).message}`);
      }
    }
  }
}
process.send!(counts, () => process.exit(0));
