import assert from "node:assert/strict";
import { test } from "node:test";
import { isTrustDomainName, trustDomainOfKey } from "../../src/config/trust-domain.js";

test("valid SPIFFE trust domain names are accepted, with or without spiffe://", () => {
  for (const name of ["example.org", "td", "prod-eu_1.example.com", "a.b.c", "0.example", "x".repeat(255)]) {
    assert.equal(isTrustDomainName(name), true, name);
    assert.equal(trustDomainOfKey(`spiffe://${name}`), name);
  }
  assert.equal(trustDomainOfKey("example.org"), "example.org");
});

test("names that could escape or clash in the volume are refused", () => {
  for (const name of ["", "..", "../../evil", "a/b", "Example.org", "example.org:443", ".hidden", "..data", "td\u0000", "td\n", "é.example", "x".repeat(256), "spiffe://x"]) {
    assert.equal(isTrustDomainName(name), false, JSON.stringify(name));
  }
  assert.equal(trustDomainOfKey("spiffe://../../evil"), undefined);
  assert.equal(trustDomainOfKey("spiffe://example.org/path"), undefined);
});
