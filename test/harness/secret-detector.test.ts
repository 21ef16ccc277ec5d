import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { inspect } from "node:util";
import { describe, test } from "node:test";
import pino from "pino";
import { findSecrets } from "../support/secret-detector.js";
import { createTestCa } from "../support/test-ca.js";

/** What one pino line looks like when the driver logs `value` under `field`. */
function pinoLine(field: string, value: unknown): string {
  const lines: string[] = [];
  const logger = pino({ base: undefined }, { write: (line: string) => void lines.push(line.trimEnd()) });
  logger.info({ [field]: value }, "message from the agent");
  return lines[0]!;
}

const keys: [string, KeyObject][] = [
  ["P-256", generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey],
  ["P-384", generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey],
  ["Ed25519", generateKeyPairSync("ed25519").privateKey],
  ["RSA-2048", generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey],
];

describe("the secret detector finds key material by parsing it, in every form a log line could carry it", () => {
  for (const [name, key] of keys) {
    const pkcs8 = key.export({ format: "der", type: "pkcs8" });
    const forms: [string, string][] = [
      ["PKCS#8 PEM", key.export({ format: "pem", type: "pkcs8" }) as string],
      ["PEM in a JSON string", JSON.stringify({ msg: key.export({ format: "pem", type: "pkcs8" }) })],
      ["PEM body without its header, JSON-escaped", JSON.stringify({ detail: (key.export({ format: "pem", type: "pkcs8" }) as string).split("\n").slice(1, -2).join("\n") })],
      ["base64 DER", `key=${pkcs8.toString("base64")}`],
      ["base64 DER glued to a word", `keyMaterial${pkcs8.toString("base64")}`],
      ["base64url DER", `"${pkcs8.toString("base64url")}"`],
      ["hex DER", `x509SvidKey: ${pkcs8.toString("hex")}`],
      ["colon hex DER", pkcs8.toString("hex").replace(/(..)(?!$)/g, "$1:")],
      ["pino's JSON of a Buffer", pinoLine("x509SvidKey", pkcs8)],
      ["pino's JSON of a Uint8Array", pinoLine("x509SvidKey", new Uint8Array(pkcs8))],
      ["a plain byte array", JSON.stringify({ key: [...pkcs8] })],
      ["util.inspect of a Buffer (cut after 50 bytes)", inspect(pkcs8)],
      ["base64 DER cut off after 60 characters", pkcs8.toString("base64").slice(0, 60)],
    ];
    for (const [form, line] of forms) {
      test(`${name} private key as ${form}`, () => {
        assert.notDeepEqual(findSecrets(line), [], line.slice(0, 200));
      });
    }
    test(`${name} complete DER is named a private key`, () => {
      assert.ok(findSecrets(pkcs8.toString("hex")).includes("private key (DER as hex)"));
      if (name !== "Ed25519") assert.ok(findSecrets(key.export({ format: "der", type: name === "RSA-2048" ? "pkcs1" : "sec1" }).toString("base64")).includes("private key (DER as base64)"));
    });
  }

  test("certificates and JWTs from the test CA", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const svid = await ca.issueX509Svid({ spiffeId: "spiffe://example.org/web" });
    const certDer = Buffer.from(svid.certChainDer[0]!);
    assert.ok(findSecrets(certDer.toString("base64")).includes("certificate (DER as base64)"));
    assert.ok(findSecrets(pinoLine("certChain", [certDer])).includes("certificate (DER as a byte array)"));
    assert.ok(findSecrets(pinoLine("key", Buffer.from(svid.keyPkcs8Der))).includes("private key (DER as a byte array)"));
    assert.ok(findSecrets(ca.rootPem).includes("PEM block"));
    const token = ca.signJwt({ spiffeId: "spiffe://example.org/web", audience: ["vault"] });
    assert.deepEqual(findSecrets(`token=${token}`), ["JWT"]);
  });

  test("lines the driver logs legitimately are clean", () => {
    const clean = [
      '{"level":30,"time":1764614400000,"msg":"identity files written","serialNumber":"4A3BF07C560F0380D2B19B51C5A42133","spiffeId":"spiffe://example.org/ns/demo/sa/web"}',
      '{"level":30,"volumeId":"csi-5f0c8f8f1f8b4b7f9c6f7f1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c","msg":"volume published","ms":12}',
      '{"targetPath":"/var/lib/kubelet/pods/7d0c5a8e-1111-4222-8333-444455556666/volumes/kubernetes.io~csi/spiffe/mount"}',
      `{"fingerprint":"${"ab".repeat(32)}","sha256":"${Buffer.alloc(32, 7).toString("base64")}"}`,
      '{"selectors":"k8s:ns:demo k8s:sa:web k8s:pod-uid:7d0c5a8e-1111-4222-8333-444455556666 k8s:pod-name:web-0 k8s:node-name:test-node"}',
      `{"msg":"csi call ok","method":"NodePublishVolume","histogram":[${Array.from({ length: 60 }, (_, i) => i).join(",")}]}`,
      "    at Volume.drainWrites (/app/dist/src/volume/volume.js:241:17)",
    ];
    for (const line of clean) assert.deepEqual(findSecrets(line), [], line);
  });
});
