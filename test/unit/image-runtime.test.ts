import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { imageEnv, imageNodeFlags } from "../support/driver-process.js";

// The bench measures the driver as the image runs it; these read the runtime stage of the Dockerfile.
test("the measured driver gets the image's ENTRYPOINT node flags and runtime ENV", () => {
  const dockerfile = readFileSync(new URL("../../Dockerfile", import.meta.url), "utf8");
  const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)![1]!) as string[];
  assert.deepEqual(imageNodeFlags(), entrypoint.slice(1, -1));
  assert.ok(imageNodeFlags().includes("--max-semi-space-size=1"));
  const env = imageEnv();
  assert.equal(env.MALLOC_ARENA_MAX, "2");
  assert.equal(env.NODE_ENV, "production");
});
