import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

test("src/gen is what `buf generate` makes from proto/ (run `npm run generate` after editing a proto)", async (t) => {
  const work = await mkdtemp(join(tmpdir(), "gen-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  for (const name of ["proto", "buf.yaml", "buf.gen.yaml"]) await cp(join(repoRoot, name), join(work, name), { recursive: true });
  const bin = join(repoRoot, "node_modules", ".bin");
  await run(join(bin, "buf"), ["generate"], { cwd: work, env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });

  const committed = join(repoRoot, "src", "gen");
  const fresh = join(work, "src", "gen");
  assert.deepEqual(await listFiles(fresh), await listFiles(committed), "the same files are generated");
  for (const file of await listFiles(fresh)) {
    assert.equal(await readFile(join(committed, file), "utf8"), await readFile(join(fresh, file), "utf8"), `${file} is up to date`);
  }
});
