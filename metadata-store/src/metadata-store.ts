import { constants } from "node:fs";
import { chmod, lstat, mkdir, open, readdir, rename, unlink, type FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import writeFileAtomic from "write-file-atomic";
import { MetadataStoreError } from "./errors.js";
import { KeyLock } from "./key-lock.js";
import {
  currentSchemaVersion,
  describeIssues,
  knownRecordFields,
  storedVolumeRecordSchema,
  volumeIdSchema,
  volumeRecordSchema,
  type VolumeRecord,
} from "./volume-record.js";

/** The subset of a pino logger the store uses. */
export interface StoreLogger {
  warn(details: object, message: string): void;
  info(details: object, message: string): void;
}

/** A record file that could not be used: `file` is its name in the store dir, now moved to `quarantine/`. */
export interface QuarantinedRecord {
  file: string;
  reason: string;
}

export interface MetadataStoreOptions {
  logger?: StoreLogger;
}

const silent: StoreLogger = { warn: () => undefined, info: () => undefined };
const recordSuffix = ".json";
const quarantineDirName = "quarantine";
/**
 * write-file-atomic writes `<target>.<uint32 in decimal>` and renames it over `<target>`, so our
 * temp files are exactly the names matching this pattern.
 */
const tempFilePattern = /^([A-Za-z0-9._-]{1,128})\.json\.\d+$/;
/** A record write (a few hundred bytes and a rename) is over long before this. */
const staleTempMs = 60_000;

/**
 * Per-volume operations are serialized through one lock shared by every instance in the process,
 * keyed by the resolved dir and the volume id, so two instances opened on the same dir agree.
 */
const locks = new KeyLock();

type ReadOutcome =
  | { kind: "record"; record: VolumeRecord }
  | { kind: "quarantined"; quarantined: QuarantinedRecord }
  | { kind: "missing" };

/**
 * One JSON file per volume (`<volumeId>.json`) in a host dir (0700), each written to a temp file
 * and renamed over the old one (0600), so a crash of the driver leaves either the old or the new
 * record, never a torn one. Records are not fsynced: see `put` for why a power loss is harmless.
 * Reads validate every record; a record that fails is moved to `quarantine/<name>.<timestamp>`
 * with the reason logged, and never stops the driver from adopting the others.
 *
 * Concurrency: put, get, delete (and list's handling of each file) for one volume id run one at a
 * time in call order, so the last operation called wins. In particular a delete called while a
 * put of the same id is in flight waits for that put to finish and then removes the record;
 * without that queue the unlink could land between write-file-atomic's temp write and its rename,
 * and the rename would resurrect the record. Different ids never wait for each other. The queue is
 * per process: one driver process is expected to own the dir at a time.
 */
export class MetadataStore {
  readonly dir: string;
  /** Records whose ignored fields were already logged, so each is reported once, not on every read. */
  private readonly reportedIgnoredFields = new Set<string>();

  private constructor(
    dir: string,
    private readonly logger: StoreLogger,
  ) {
    this.dir = dir;
  }

  /** Creates (or tightens to 0700) the dir and its `quarantine/` subdir. */
  static async open(dir: string, options: MetadataStoreOptions = {}): Promise<MetadataStore> {
    const absolute = resolve(dir);
    const quarantine = join(absolute, quarantineDirName);
    try {
      await mkdir(quarantine, { recursive: true, mode: 0o700 });
      await chmod(absolute, 0o700);
      await chmod(quarantine, 0o700);
    } catch (error) {
      throw ioError(`cannot prepare the metadata dir ${absolute}`, error);
    }
    return new MetadataStore(absolute, options.logger ?? silent);
  }

  /**
   * Validates and atomically writes the record, replacing any earlier record of the same volume.
   *
   * Without fsync, on purpose: on an ext4 disk the write took 6.5 ms at the median with it and
   * 1.1 ms without, on every publish (README, Performance). A record
   * exists to re-adopt volumes that kubelet will not publish again: those of a driver process that
   * crashed or restarted while the node ran on. The rename puts the record in the page cache,
   * which that crash does not touch, so the next process reads it whole. Only a power loss or a
   * kernel crash can lose what the disk has not yet got, and after one kubelet restarts every
   * pod and publishes each of its volumes again (or unpublishes the volumes of pods deleted
   * meanwhile), with either backing: a tmpfs is gone with the memory, and a `directory` volume's
   * files are no more durable than its record (snapshots are not fsynced either). So whatever the
   * disk holds after a power loss is made whole by kubelet's call, and start-up only has to stay
   * out of its way:
   * - no record (neither temp file nor rename reached the disk): kubelet's publish writes it, its
   *   unpublish cleans up a target it finds without a record;
   * - a zero-length or torn record (the rename reached the disk before the data; ext4 only
   *   orders them when a file is replaced, XFS not at all): list() quarantines it, the volume
   *   counts as adoption-failed until kubelet's publish or unpublish of that volume id;
   * - write-file-atomic's temp file: list() removes it (older than a minute by then);
   * - a record whose target kubelet removed: dropped at start, as after any restart.
   * test/integration/power-loss.test.ts leaves each of these behind for both backings.
   */
  async put(record: VolumeRecord): Promise<void> {
    const result = volumeRecordSchema.safeParse(record);
    if (!result.success) {
      throw new MetadataStoreError("invalid-record", `invalid volume record: ${describeIssues(result.error)}`);
    }
    const valid = result.data;
    const content = `${JSON.stringify(valid, null, 2)}\n`;
    await this.locked(valid.volumeId, async () => {
      try {
        await writeFileAtomic(this.pathOf(valid.volumeId), content, { mode: 0o600, fsync: false });
      } catch (error) {
        throw ioError(`writing the record of ${valid.volumeId} failed`, error);
      }
    });
  }

  /** The record of the volume, or undefined if there is none. An unusable one is quarantined (and undefined). */
  async get(volumeId: string): Promise<VolumeRecord | undefined> {
    const id = checkId(volumeId);
    const outcome = await this.locked(id, () => this.read(`${id}${recordSuffix}`));
    return outcome.kind === "record" ? outcome.record : undefined;
  }

  /** Deletes the record; a missing one is fine. The dir is fsynced so the delete survives a crash. */
  async delete(volumeId: string): Promise<void> {
    const id = checkId(volumeId);
    await this.locked(id, async () => {
      try {
        await unlink(this.pathOf(id));
      } catch (error) {
        if (errnoOf(error) === "ENOENT") return;
        throw ioError(`deleting the record of ${id} failed`, error);
      }
      try {
        await syncDir(this.dir);
      } catch (error) {
        throw ioError(`syncing ${this.dir} after deleting the record of ${id} failed`, error);
      }
    });
  }

  /**
   * Moves the volume's record to `quarantine/` with the reason logged, for a record that is valid
   * here but that its user found unusable (e.g. it breaks the driver's publish rules). A missing
   * record is fine; a failed move throws MetadataStoreError("io").
   */
  async quarantineRecord(volumeId: string, reason: string): Promise<void> {
    const id = checkId(volumeId);
    const outcome = await this.locked(id, () => this.quarantine(`${id}${recordSuffix}`, reason));
    if (outcome.kind === "quarantined" && outcome.quarantined.reason !== reason) {
      throw new MetadataStoreError("io", `moving the record of ${id} to quarantine failed: ${outcome.quarantined.reason}`);
    }
  }

  /**
   * Every usable record, plus every record file that was moved to quarantine by this call. Never
   * throws because of a bad record; throws MetadataStoreError("io") only if the filesystem fails.
   *
   * Which entries are looked at:
   * - regular files named `*.json` are records (a symlink, FIFO, socket or device named `*.json`,
   *   or a file that cannot be read or is larger than any record, is quarantined, never followed
   *   and never waited on);
   * - `<volumeId>.json.<digits>` are write-file-atomic temp files: never read as records. One older
   *   than a minute is removed (its writer died mid-write; the target record is untouched), a
   *   fresher one is left alone since a writer, possibly in another process, may still rename it;
   * - everything else (subdirectories such as `quarantine/`, other names) is ignored and left as is:
   *   it is not ours to delete.
   */
  async list(): Promise<{ records: VolumeRecord[]; quarantined: QuarantinedRecord[] }> {
    let names: string[];
    try {
      names = (await readdir(this.dir)).sort();
    } catch (error) {
      throw ioError(`listing ${this.dir} failed`, error);
    }
    // Entries are read a few dozen at a time (a node holds hundreds after a restart; one at a time
    // kept every pod waiting, all at once could run out of file descriptors) and reported in name
    // order. All reads finish before a failure is thrown, so none is still moving files after.
    const settled = await settleWithLimit(names, listConcurrency, async (name): Promise<ReadOutcome | undefined> => {
      if (name.endsWith(recordSuffix)) return this.lockedByFileName(name, () => this.read(name));
      const temp = tempFilePattern.exec(name);
      if (temp?.[1] !== undefined) await this.lockedByFileName(`${temp[1]}${recordSuffix}`, () => this.sweepTempFile(name));
      return undefined;
    });
    const records: VolumeRecord[] = [];
    const quarantined: QuarantinedRecord[] = [];
    for (const outcome of settled) {
      if (outcome.status === "rejected") throw outcome.reason;
      if (outcome.value?.kind === "record") records.push(outcome.value.record);
      else if (outcome.value?.kind === "quarantined") quarantined.push(outcome.value.quarantined);
    }
    return { records, quarantined };
  }

  /**
   * A directory that happens to be named `*.json` is not a record: it reads as missing and is left
   * alone. Anything else that cannot be read as a small regular file is quarantined: the dir is
   * read before the CSI socket comes up, so one odd entry must never hold up or stop the start.
   */
  private async read(file: string): Promise<ReadOutcome> {
    const path = join(this.dir, file);
    let text: string;
    try {
      // O_NOFOLLOW: a symlink planted in the dir is never followed to somewhere else.
      // O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever (and hold one of
      // libuv's four threadpool threads while it does); for a regular file it changes nothing.
      const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        const info = await handle.stat();
        if (info.isDirectory()) return { kind: "missing" };
        if (!info.isFile()) return await this.quarantine(file, "not a regular file");
        if (info.size > maxRecordBytes) return await this.quarantine(file, `larger than ${maxRecordBytes} bytes (${info.size})`);
        const bounded = await readAtMost(handle, maxRecordBytes);
        if (bounded === undefined) return await this.quarantine(file, `larger than ${maxRecordBytes} bytes (grew while being read)`);
        text = bounded;
      } finally {
        await handle.close();
      }
    } catch (error) {
      if (error instanceof MetadataStoreError) throw error;
      const code = errnoOf(error);
      if (code === "ENOENT") return { kind: "missing" };
      if (code === "ELOOP") return await this.quarantine(file, "a symbolic link, not a regular file");
      if (code !== undefined && unreadableCodes.has(code)) return await this.quarantine(file, `unreadable (${code})`);
      throw ioError(`reading ${file} failed`, error);
    }
    const parsed = parseRecord(text, file);
    if (typeof parsed === "string") return await this.quarantine(file, parsed);
    if (parsed.ignoredFields.length > 0) this.reportIgnoredFields(file, parsed.ignoredFields);
    return { kind: "record", record: parsed.record };
  }

  private reportIgnoredFields(file: string, ignoredFields: readonly string[]): void {
    const key = `${file}\0${ignoredFields.join("\0")}`;
    if (this.reportedIgnoredFields.has(key)) return;
    this.reportedIgnoredFields.add(key);
    this.logger.info(
      { file, ignoredFields: ignoredFields.slice(0, maxReportedFields).map((name) => name.slice(0, maxReportedFieldLength)), ignoredFieldCount: ignoredFields.length },
      "kept a volume record written by a newer driver; ignored the fields this driver does not know",
    );
  }

  /**
   * Moves the file to `quarantine/<file>.<timestamp>` (with a counter if that name is taken) and
   * reports it. If the move itself fails the record is still reported and left in place, to be
   * reported again by the next list; a bad record never makes the store throw.
   */
  private async quarantine(file: string, reason: string): Promise<ReadOutcome> {
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    const quarantineDir = join(this.dir, quarantineDirName);
    try {
      let target = `${file}.${stamp}`;
      for (let n = 1; await exists(join(quarantineDir, target)); n++) target = `${file}.${stamp}.${n}`;
      await rename(join(this.dir, file), join(quarantineDir, target));
      await syncDir(this.dir);
      await syncDir(quarantineDir);
      this.logger.warn({ file, movedTo: join(quarantineDirName, target), reason }, "quarantined an unusable volume record");
    } catch (error) {
      if (errnoOf(error) === "ENOENT") return { kind: "missing" };
      this.logger.warn({ file, reason, err: error }, "found an unusable volume record but could not move it to quarantine");
      return { kind: "quarantined", quarantined: { file, reason: `${reason} (not moved: ${messageOf(error)})` } };
    }
    return { kind: "quarantined", quarantined: { file, reason } };
  }

  private async sweepTempFile(name: string): Promise<void> {
    const path = join(this.dir, name);
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isFile() || Date.now() - info.mtimeMs <= staleTempMs) return;
    try {
      await unlink(path);
      this.logger.info({ file: name }, "removed a temp file left by an interrupted record write");
    } catch (error) {
      if (errnoOf(error) !== "ENOENT") this.logger.warn({ file: name, err: error }, "could not remove a stale temp file");
    }
  }

  private locked<T>(volumeId: string, job: () => Promise<T>): Promise<T> {
    return locks.run(`${this.dir}\0${volumeId}`, job);
  }

  /** Files named after a valid volume id share that id's queue; any other name cannot race with put. */
  private lockedByFileName<T>(file: string, job: () => Promise<T>): Promise<T> {
    const id = file.slice(0, -recordSuffix.length);
    return volumeIdSchema.safeParse(id).success ? this.locked(id, job) : job();
  }

  private pathOf(volumeId: string): string {
    return join(this.dir, `${volumeId}${recordSuffix}`);
  }
}

/**
 * The record in `text` with the names of the fields it holds that this driver does not know (they
 * are not in the record), or why it cannot be used. The compatibility rule is at currentSchemaVersion.
 */
function parseRecord(text: string, file: string): string | { record: VolumeRecord; ignoredFields: string[] } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return `not JSON (${messageOf(error)})`;
  }
  const fields = typeof json === "object" && json !== null && !Array.isArray(json) ? (json as Record<string, unknown>) : undefined;
  if (fields !== undefined && "schemaVersion" in fields) {
    const version = fields.schemaVersion;
    if (typeof version === "number" && Number.isSafeInteger(version) && version > currentSchemaVersion) {
      return `written by a newer driver (schemaVersion ${version}); roll forward, or kubelet republishes after the pod restarts`;
    }
    if (version !== currentSchemaVersion) return `unsupported schemaVersion ${typeof version === "number" ? version : JSON.stringify(version)}`;
  }
  const result = storedVolumeRecordSchema.safeParse(json);
  if (!result.success) return describeIssues(result.error);
  if (`${result.data.volumeId}${recordSuffix}` !== file) return `volumeId ${result.data.volumeId} does not match the file name`;
  const ignoredFields = Object.keys(fields ?? {}).filter((name) => !knownRecordFields.has(name));
  return { record: result.data, ignoredFields };
}

function checkId(volumeId: string): string {
  const result = volumeIdSchema.safeParse(volumeId);
  if (!result.success) {
    const rules = result.error.issues.map((issue) => issue.message).join("; ");
    throw new MetadataStoreError("invalid-record", `invalid volumeId ${JSON.stringify(volumeId)}: ${rules}`);
  }
  return result.data;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return false;
    throw error;
  }
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function ioError(what: string, error: unknown): MetadataStoreError {
  return new MetadataStoreError("io", `${what}: ${messageOf(error)}`, { cause: error });
}

const listConcurrency = 32;

/** Field names come from the file: a record stuffed with long or many names must not flood the log. */
const maxReportedFields = 16;
const maxReportedFieldLength = 64;

/**
 * A valid record is a few KiB at most (every attribute it holds has a length limit), so anything
 * far larger is not one of ours, and reading it whole could exhaust memory before the start.
 */
const maxRecordBytes = 64 * 1024;

/**
 * Errors that belong to the file itself (its permissions, its device, its content) rather than to
 * the store as a whole: the file is quarantined and the other records are still adopted. Anything
 * else (EMFILE, ENOMEM, ...) says nothing about the record and is thrown as an io error.
 */
const unreadableCodes: ReadonlySet<string> = new Set(["EACCES", "EPERM", "EIO", "ENXIO", "ENODEV"]);

/** The file's text, or undefined if it holds more than `limit` bytes. */
async function readAtMost(handle: FileHandle, limit: number): Promise<string | undefined> {
  const buffer = Buffer.alloc(limit + 1);
  let length = 0;
  while (length < buffer.length) {
    const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  return length > limit ? undefined : buffer.toString("utf8", 0, length);
}

/** Promise.allSettled over `items` with at most `limit` calls in flight; results in input order. */
async function settleWithLimit<T, R>(items: readonly T[], limit: number, call: (item: T) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const results: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      try {
        results[index] = { status: "fulfilled", value: await call(items[index]!) };
      } catch (reason) {
        results[index] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
