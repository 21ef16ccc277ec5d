import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, open, readFile, rm, stat, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { MountCommandError, MountRunner, MountTimeoutError, shellQuote, type MountRequest } from "../../src/files/mount-runner.js";
import { encodeMountField, isMountPoint } from "../../src/files/mount-table.js";
import { hangingMountCommands } from "../support/hanging-mount.js";
import { alive, aliveOf } from "../support/process-tree.js";

async function withDir(run: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp("/tmp/scsi-mr-");
  try {
    await run(dir);
  } finally {
    const mountInfo = await readFile("/proc/self/mountinfo", "utf8");
    for (const line of mountInfo.split("\n").reverse()) {
      const path = line.split(" ")[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
      if (path?.startsWith(dir)) execFileSync("umount", [path]);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

const tmpfs = (target: string): MountRequest => ({ source: "tmpfs", target, fsType: "tmpfs", options: ["size=1m", "mode=755", "nosuid", "nodev", "noexec"] });

test("shell quoting keeps every byte of an argument literal", () => {
  const nasty = `it's $(rm -rf /) "a" \`b\` \\ ;|&\n`;
  assert.equal(execFileSync("/bin/sh", ["-c", `printf %s ${shellQuote(nasty)}`], { encoding: "utf8" }), nasty);
});

test("fstab fields escape blanks and backslashes as octal", () => {
  assert.equal(encodeMountField("/a b\tc\nd\\e"), "/a\\040b\\011c\\012d\\134e");
  assert.equal(encodeMountField("/caf\u00e9\u00a0x"), "/caf\u00e9\u00a0x", "other characters stay as they are (UTF-8 in the file)");
});

test("mount and unmount, with paths that need quoting and escaping", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 2 });
    try {
      const target = join(dir, "it's a target\\x");
      await mkdir(target);
      await runner.mount(tmpfs(target));
      assert.equal(await isMountPoint(target), true);
      await runner.mount(tmpfs(target));
      assert.equal(await isMountPoint(target), true, "mounting an already mounted target is a no-op");
      await runner.unmount(target);
      assert.equal(await isMountPoint(target), false);
    } finally {
      runner.close();
    }
  });
});

test("a mount point is found by its device or, failing that, by the mount table", async () => {
  await withDir(async (dir) => {
    const [onTmpfs, source, boundSameFs, plain] = ["tmpfs", "source", "bound", "plain"].map((name) => join(dir, name));
    for (const path of [onTmpfs, source, boundSameFs, plain]) await mkdir(path!);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", onTmpfs!]);
    // A bind mount within one filesystem keeps the parent's device: only the table tells.
    execFileSync("mount", ["--bind", source!, boundSameFs!]);
    assert.equal((await stat(boundSameFs!)).dev, (await stat(dir)).dev);
    assert.equal(await isMountPoint(onTmpfs!), true);
    assert.equal(await isMountPoint(boundSameFs!), true);
    assert.equal(await isMountPoint(plain!), false);
    assert.equal(await isMountPoint(join(dir, "missing")), false);
    // A table handed in is the answer, as re-adoption reads it once for every record.
    assert.equal(await isMountPoint(onTmpfs!, new Set()), false);
    assert.equal(await isMountPoint(plain!, new Set([plain!])), true);
  });
});

test("in one batch, a bad target fails alone with mount's reason, and the others are mounted", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 1 });
    try {
      const good = Array.from({ length: 5 }, (_, index) => join(dir, `good-${index}`));
      await Promise.all(good.map((target) => mkdir(target)));
      const missing = join(dir, "missing");
      // The first call occupies the only shell, so the rest queue up and go as one batch.
      const results = await Promise.allSettled([runner.mount(tmpfs(good[0]!)), runner.mount(tmpfs(missing)), ...good.slice(1).map((target) => runner.mount(tmpfs(target)))]);
      const failure = results[1];
      assert.equal(failure?.status, "rejected");
      const error = (failure as PromiseRejectedResult).reason as Error;
      assert.ok(error instanceof MountCommandError);
      assert.match(error.message, new RegExp(`^mounting tmpfs on ${missing} failed \\(exit \\d+\\): .*${missing}.*does not exist`));
      for (const [index, result] of results.entries()) if (index !== 1) assert.equal(result.status, "fulfilled");
      for (const target of good) assert.equal(await isMountPoint(target), true, target);

      // A file held open keeps a tmpfs busy: its unmount fails, the others in the batch go through.
      const busy = join(dir, "busy");
      await mkdir(busy);
      await runner.mount(tmpfs(busy));
      const handle = await open(join(busy, "held"), "w");
      try {
        const unmounts = await Promise.allSettled([runner.unmount(good[0]!), runner.unmount(busy), ...good.slice(1).map((target) => runner.unmount(target))]);
        assert.equal(unmounts[1]?.status, "rejected");
        assert.match(((unmounts[1] as PromiseRejectedResult).reason as Error).message, /^unmounting .*busy failed \(exit \d+\): .*busy/);
        for (const target of good) assert.equal(await isMountPoint(target), false, target);
        assert.equal(await isMountPoint(busy), true);
      } finally {
        await handle.close();
      }
      await runner.unmount(busy);
      await runner.unmount(busy);
      assert.equal(await isMountPoint(busy), false, "unmounting what is not mounted is done, not an error");
    } finally {
      runner.close();
    }
  });
});

test("a burst larger than a batch is all mounted and unmounted", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 2 });
    try {
      const targets = Array.from({ length: 300 }, (_, index) => join(dir, String(index)));
      await Promise.all(targets.map((target) => mkdir(target)));
      await Promise.all(targets.map((target) => runner.mount(tmpfs(target))));
      for (const target of targets) assert.equal(await isMountPoint(target), true, target);
      await Promise.all(targets.map((target) => runner.unmount(target)));
      for (const target of targets) assert.equal(await isMountPoint(target), false, target);
    } finally {
      runner.close();
    }
  });
});

test("a shell that dies is replaced for the next command", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 1 });
    try {
      const target = join(dir, "t");
      await mkdir(target);
      await runner.mount(tmpfs(target));
      // The pool's idle shell dies (OOM killer, a stray kill); the runner must notice and replace it.
      const shells = execFileSync("pgrep", ["-P", String(process.pid), "-x", "sh"], { encoding: "utf8" }).trim().split("\n");
      for (const pid of shells) process.kill(Number(pid), "SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 100));
      await runner.unmount(target);
      assert.equal(await isMountPoint(target), false);
    } finally {
      runner.close();
    }
  });
});

test("a command for a shell that just died fails at once from the mount table, and the next one gets a new shell", { timeout: 15_000 }, async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 1 });
    try {
      const first = join(dir, "first");
      const second = join(dir, "second");
      await Promise.all([mkdir(first), mkdir(second)]);
      await runner.mount(tmpfs(first));
      const shells = execFileSync("pgrep", ["-P", String(process.pid), "-x", "sh"], { encoding: "utf8" }).trim().split("\n");
      for (const pid of shells) process.kill(Number(pid), "SIGKILL");
      // No pause: the runner has not seen the exit yet and hands this mount to the dead shell.
      await assert.rejects(runner.mount(tmpfs(second)), (error: unknown) => {
        assert.ok(error instanceof MountCommandError);
        assert.match(error.message, /^mounting tmpfs on .*second failed \(exit none\): the mount shell (is gone|exited)/);
        return true;
      });
      assert.equal(await isMountPoint(second), false);
      await runner.mount(tmpfs(second));
      assert.equal(await isMountPoint(second), true);
    } finally {
      runner.close();
    }
  });
});

test("a closed runner rejects what is queued and what comes later", async () => {
  await withDir(async (dir) => {
    const runner = new MountRunner({ poolSize: 1 });
    const targets = [join(dir, "a"), join(dir, "b")];
    await Promise.all(targets.map((target) => mkdir(target)));
    const first = runner.mount(tmpfs(targets[0]!));
    const queued = runner.mount(tmpfs(targets[1]!));
    runner.close();
    await assert.rejects(queued, /closed/);
    await first.catch(() => undefined);
    await assert.rejects(runner.mount(tmpfs(targets[1]!)), /closed/);
    assert.equal(await isMountPoint(targets[1]!), false);
  });
});

test("fstab dirs left by a killed driver are swept; fresh ones are left alone", async () => {
  await withDir(async (dir) => {
    const stale = await mkdtemp(join(tmpdir(), "spire-csi-fstab-"));
    const fresh = await mkdtemp(join(tmpdir(), "spire-csi-fstab-"));
    const runner = new MountRunner({ poolSize: 1 });
    try {
      const twoMinutesAgo = new Date(Date.now() - 120_000);
      await utimes(stale, twoMinutesAgo, twoMinutesAgo);
      const target = join(dir, "t");
      await mkdir(target);
      await runner.mount(tmpfs(target));
      // The sweep runs beside the first batch; give it a moment.
      for (let attempt = 0; attempt < 50 && (await exists(stale)); attempt++) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(await exists(stale), false);
      assert.equal(await exists(fresh), true);
    } finally {
      runner.close();
      await rm(stale, { recursive: true, force: true });
      await rm(fresh, { recursive: true, force: true });
    }
  });
});

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function until(condition: () => Promise<boolean>): Promise<void> {
  while (!(await condition())) await new Promise((resolve) => setTimeout(resolve, 20));
}

test("a hung mount fails alone at its deadline (its mount(8) killed); mounts behind it and other volumes' mounts and unmounts go on", { timeout: 30_000 }, async () => {
  await withDir(async (dir) => {
    const fake = await hangingMountCommands(dir);
    const runner = new MountRunner({ poolSize: 1, commands: fake.commands });
    try {
      const [first, hung, behind, later, old] = ["first", "hang", "behind", "later", "old"].map((name) => join(dir, name)) as [string, string, string, string, string];
      await Promise.all([first, hung, behind, later, old].map((target) => mkdir(target)));
      await runner.mount(tmpfs(old));
      // The shell is released just after the job settles.
      await new Promise((resolve) => setImmediate(resolve));
      const settled: string[] = [];
      const track = (name: string, operation: Promise<void>) =>
        operation.then(
          () => void settled.push(name),
          (error: unknown) => {
            settled.push(name);
            throw error;
          },
        );
      // The first mount takes the only pooled shell, so the hung one and the one behind it go as
      // one batch next, the hung target first in its fstab: the one behind is never attempted.
      const firstMount = track("first", runner.mount(tmpfs(first), 20_000));
      const hungMount = track("hang", runner.mount(tmpfs(hung), 3_000));
      const behindMount = track("behind", runner.mount(tmpfs(behind), 20_000));
      hungMount.catch(() => undefined);
      await firstMount;
      await until(async () => (await fake.hungPids()).length === 1);

      // Other volumes, while the only pooled shell hangs: a spare shell takes them.
      await track("later", runner.mount(tmpfs(later), 20_000));
      await track("old", runner.unmount(old, 20_000));
      assert.deepEqual(settled, ["first", "later", "old"], "neither waited for the hung mount");
      assert.equal(await isMountPoint(later), true);
      assert.equal(await isMountPoint(old), false);

      await assert.rejects(hungMount, (error: unknown) => {
        assert.ok(error instanceof MountTimeoutError);
        assert.match(error.message, new RegExp(`^mounting tmpfs on ${hung} did not finish within 3s; the mount command was killed$`));
        return true;
      });
      await behindMount;
      assert.deepEqual(settled, ["first", "later", "old", "hang", "behind"]);
      assert.equal(await isMountPoint(behind), true, "the innocent neighbour was retried alone and mounted");
      assert.equal(await isMountPoint(hung), false);
      const [pid] = await fake.hungPids();
      await until(async () => !(await alive(pid!)));
    } finally {
      runner.close();
      for (const pid of await aliveOf(await fake.hungPids())) process.kill(pid, "SIGKILL");
    }
  });
});

test("a hung unmount fails at its deadline and does not hold up another volume's unmount", { timeout: 30_000 }, async () => {
  await withDir(async (dir) => {
    const fake = await hangingMountCommands(dir);
    const runner = new MountRunner({ poolSize: 1, commands: fake.commands });
    try {
      const hung = join(dir, "hang");
      const other = join(dir, "other");
      await Promise.all([mkdir(hung), mkdir(other)]);
      // Mounted with the real mount(8): the fake would hang on this target.
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", hung]);
      await runner.mount(tmpfs(other));
      const hungUnmount = runner.unmount(hung, 2_000);
      let hungSettled = false;
      hungUnmount.then(
        () => (hungSettled = true),
        () => (hungSettled = true),
      );
      await until(async () => (await fake.hungPids()).length === 1);
      await runner.unmount(other, 20_000);
      assert.equal(hungSettled, false, "the other unmount did not wait for the hung one");
      assert.equal(await isMountPoint(other), false);
      await assert.rejects(hungUnmount, (error: unknown) => error instanceof MountTimeoutError && /^unmounting .*hang did not finish within 2s/.test(error.message));
      assert.equal(await isMountPoint(hung), true, "still mounted: the fake never unmounted it");
    } finally {
      runner.close();
      for (const pid of await aliveOf(await fake.hungPids())) process.kill(pid, "SIGKILL");
    }
  });
});
