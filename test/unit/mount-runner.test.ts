import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { isMountPoint } from "../../src/files/target-mount.js";
import { MountCommandError, MountRunner, shellQuote } from "../../src/files/mount-runner.js";

async function withDir(run: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp("/tmp/scsi-mr-");
  try {
    await run(dir);
  } finally {
    for (const line of execFileSync("cat", ["/proc/self/mountinfo"], { encoding: "utf8" }).split("\n").reverse()) {
      const path = line.split(" ")[4]?.replace(/\\040/g, " ");
      if (path?.startsWith(dir)) execFileSync("umount", [path]);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

test("shell quoting keeps every byte of an argument literal", () => {
  const nasty = `it's $(rm -rf /) "a" \`b\` \\ ;|&\n`;
  assert.equal(execFileSync("/bin/sh", ["-c", `printf %s ${shellQuote(nasty)}`], { encoding: "utf8" }), nasty);
});

test("mount and umount run through the shells, with paths that need quoting", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner(2);
    try {
      const target = join(dir, "it's a target");
      await mkdir(target);
      await runner.run("mount", ["-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", target]);
      assert.equal(await isMountPoint(target), true);
      await runner.run("umount", [target]);
      assert.equal(await isMountPoint(target), false);
    } finally {
      runner.close();
    }
  });
});

test("a failing command rejects with its exit status and output; the next command still runs", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner(1);
    try {
      const missing = join(dir, "missing");
      await assert.rejects(runner.run("mount", ["-t", "tmpfs", "tmpfs", missing]), (error: unknown) => {
        assert.ok(error instanceof MountCommandError);
        assert.match(error.message, new RegExp(`^mount -t tmpfs tmpfs ${missing} failed \\(exit \\d+\\): .*${missing}`));
        return true;
      });
      await assert.rejects(runner.run("umount", [dir]), /umount .* failed \(exit \d+\)/);
      const target = join(dir, "ok");
      await mkdir(target);
      await runner.run("mount", ["-t", "tmpfs", "tmpfs", target]);
      assert.equal(await isMountPoint(target), true);
    } finally {
      runner.close();
    }
  });
});

test("a burst of commands larger than the pool all complete", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner(2);
    try {
      const targets = Array.from({ length: 12 }, (_, index) => join(dir, String(index)));
      await Promise.all(targets.map((target) => mkdir(target)));
      await Promise.all(targets.map((target) => runner.run("mount", ["-t", "tmpfs", "tmpfs", target])));
      for (const target of targets) assert.equal(await isMountPoint(target), true, target);
      await Promise.all(targets.map((target) => runner.run("umount", [target])));
      for (const target of targets) assert.equal(await isMountPoint(target), false, target);
    } finally {
      runner.close();
    }
  });
});

test("a shell that dies is replaced for the next command", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner(1);
    try {
      const target = join(dir, "t");
      await mkdir(target);
      await runner.run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", target]);
      // The pool's idle shell dies (OOM killer, a stray kill); the runner must notice and replace it.
      const shells = execFileSync("pgrep", ["-P", String(process.pid), "-x", "sh"], { encoding: "utf8" }).trim().split("\n");
      for (const pid of shells) process.kill(Number(pid), "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 100));
      await runner.run("umount", [target]);
      assert.equal(await isMountPoint(target), false);
    } finally {
      runner.close();
    }
  });
});
