import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import { createLogger } from "../../src/log.js";

const pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9hcHAifQ.c2lnbmF0dXJl";

function capture(level = "debug") {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString("utf8").split("\n").filter(Boolean)) {
        raw.push(line);
        lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  return { logger: createLogger(level, stream), lines, raw };
}

describe("logger", () => {
  test("levels are names, and the configured level filters", () => {
    const { logger, lines } = capture("info");
    logger.debug("hidden");
    logger.info("shown");
    logger.warn("careful");
    assert.deepEqual(
      lines.map((line) => [line.level, line.msg]),
      [
        ["info", "shown"],
        ["warn", "careful"],
      ],
    );
  });

  test("key material is redacted at any depth: by field name, PEM or JWT value, raw bytes", () => {
    const { logger, lines, raw } = capture();
    const deep = { a: { b: { c: { d: { e: { f: { privateKey: "x", note: pem } } } } } } };
    logger.info(
      {
        deep,
        list: [{ token: "t" }, [jwt], "plain"],
        der: new Uint8Array([48, 130, 1, 10]),
        svid: { x509SvidKey: "k", spiffeId: "spiffe://example.org/app" },
        map: new Map([["content", "file body"]]),
      },
      "event",
    );
    const line = lines[0]!;
    assert.equal(raw.some((text) => text.includes("BEGIN") || text.includes("eyJ")), false);
    assert.deepEqual((line.deep as typeof deep).a.b.c.d.e.f, { privateKey: "[redacted]", note: "[redacted]" });
    assert.deepEqual(line.list, [{ token: "[redacted]" }, ["[redacted]"], "plain"]);
    assert.equal(line.der, "[redacted]");
    assert.deepEqual(line.svid, { x509SvidKey: "[redacted]", spiffeId: "spiffe://example.org/app" }, "non-secret fields stay readable");
    assert.deepEqual(line.map, { content: "[redacted]" });
  });

  test("child bindings are redacted too; errors keep their message and stack", () => {
    const { logger, lines } = capture();
    logger.child({ component: "volumes" }).child({ volume: { jwt } }).error({ err: new Error("mount failed") }, "failed");
    assert.equal(lines[0]!.component, "volumes", "a grandchild keeps its parent's bindings");
    assert.deepEqual(lines[0]!.volume, { jwt: "[redacted]" });
    assert.equal((lines[0]!.err as { message: string }).message, "mount failed");
    assert.match(String((lines[0]!.err as { stack: string }).stack), /mount failed/);
  });

  test("a cyclic field does not hang or throw", () => {
    const { logger, lines } = capture();
    const cyclic: Record<string, unknown> = { name: "loop" };
    cyclic.self = cyclic;
    logger.info({ cyclic }, "cyclic");
    assert.deepEqual(lines[0]!.cyclic, { name: "loop", self: "[redacted]" });
  });
});
