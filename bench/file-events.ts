import { watch, type FSWatcher } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { now } from "./clock.js";

/**
 * Records when files change in a set of directories (inotify through fs.watch), timestamped with
 * clock.now(): the outside view of when a volume's files were replaced.
 * The callback runs on this process's event loop, so a busy bench can only make times longer.
 */
export class FileEvents {
  private readonly events = new Map<string, number[]>();
  private readonly watchers: FSWatcher[] = [];

  /** Watches `dir` for changes to the names `matches` accepts. */
  watch(dir: string, matches: (name: string) => boolean): void {
    const times: number[] = [];
    this.events.set(dir, times);
    const watcher = watch(dir, (_event, name) => {
      if (name !== null && matches(String(name))) times.push(now());
    });
    watcher.on("error", () => undefined);
    this.watchers.push(watcher);
  }

  /** The first change of `dir` at or after `since`, if any. */
  firstAfter(dir: string, since: number): number | undefined {
    return this.times(dir).find((time) => time >= since);
  }

  /**
   * When the first write burst after `since` finished: the last change within `quietMs` of the
   * first one (a multi-file write), so a later, unrelated update is not counted.
   */
  firstBurstEnd(dir: string, since: number, quietMs: number): number | undefined {
    const first = this.firstAfter(dir, since);
    if (first === undefined) return undefined;
    return this.times(dir).filter((time) => time >= first && time <= first + quietMs).pop();
  }

  /** Waits until every dir has changed at or after `since`; returns the per-dir times. */
  async waitForAll(dirs: readonly string[], since: number, timeoutMs: number): Promise<number[]> {
    const deadline = now() + timeoutMs;
    for (;;) {
      const times = dirs.map((dir) => this.firstAfter(dir, since));
      if (times.every((time) => time !== undefined)) return times as number[];
      if (now() > deadline) {
        const missing = times.filter((time) => time === undefined).length;
        throw new Error(`${missing} of ${dirs.length} directories did not change within ${timeoutMs} ms`);
      }
      await sleep(10);
    }
  }

  close(): void {
    for (const watcher of this.watchers) watcher.close();
    this.watchers.length = 0;
    this.events.clear();
  }

  private times(dir: string): number[] {
    const times = this.events.get(dir);
    if (!times) throw new Error(`${dir} is not watched`);
    return times;
  }
}

/** The name whose rename publishes a driver snapshot. */
export const isSnapshotSwap = (name: string): boolean => name === "..data";
