import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";

export interface TornReaderTarget {
  kind: "snapshot" | "naive" | "spiffe-fs" | "envoy-sds";
  dir: string;
}

export interface TornReaderCounts {
  reads: number;
  mismatches: number;
  missing: number;
  naiveReads: number;
  naiveTears: number;
  errors: string[];
}

export interface TornReader {
  /** Reads (consistent-path ones) done so far, as last reported by the child. */
  readonly readsSoFar: number;
  /** Asks the child to stop and resolves with its counts. */
  stop(): Promise<TornReaderCounts>;
  /** Kills the child by PID (safe after stop; for cleanup after a failed test). */
  kill(): void;
}

/**
 * Forks test/reliability/torn-reader.ts, so the reads run in parallel with the driver and the
 * agent while the test drives rotations.
 */
export function startTornReader(targets: readonly TornReaderTarget[]): TornReader {
  const reader = fork(fileURLToPath(new URL("../reliability/torn-reader.ts", import.meta.url)), [JSON.stringify(targets)], { execArgv: ["--import", "tsx"] });
  let readsSoFar = 0;
  const result = new Promise<TornReaderCounts>((resolve, reject) => {
    reader.on("message", (message: TornReaderCounts | { progress: number }) => {
      if ("progress" in message) readsSoFar = message.progress;
      else resolve(message);
    });
    reader.once("exit", (code) => reject(new Error(`the reader exited early (${String(code)})`)));
  });
  result.catch(() => undefined);
  return {
    get readsSoFar() {
      return readsSoFar;
    },
    stop() {
      reader.send("stop");
      return result;
    },
    kill() {
      if (reader.exitCode === null && reader.signalCode === null) reader.kill("SIGKILL");
    },
  };
}
