import { chmod, mkdir, open, readdir, readFile, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import writeFileAtomic from "write-file-atomic";
import { MetadataStoreError } from "./errors.js";
import { currentSchemaVersion, describeIssues, volumeIdSchema, volumeRecordSchema, type VolumeRecord } from "./volume-record.js";

export interface StoreLogger {
  warn(details: object, message: string): void;
  info(details: object, message: string): void;
}

export interface QuarantinedRecord {
  file: string;
  reason: string;
}

const silent: StoreLogger = { warn: () => undefined, info: () => undefined };
const recordSuffix = ".json";
const quarantineDir = "quarantine";
/** write-file-atomic's temp files are `<name>.json.<n>`; older than this they belong to a dead writer. */
const staleTempMs = 60_000;

/**
 * One JSON file per volume in a host dir (0700), each written atomically with fsync (0600), so a
 * crash leaves either the old or the new record, never a torn one. Reads validate every record;
 * a record that fails is moved to `quarantine/` with the reason logged, and never stops the
 * driver from adopting the others.
 */
export class MetadataStore {
  private constructor(
    readonly dir: string,
    private readonly logger: StoreLogger,
  ) {}

  static async open(dir: string, options: { logger?: StoreLogger } = {}): Promise<MetadataStore> {
    try {
      await mkdir(join(dir, quarantineDir), { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
      await chmod(join(dir, quarantineDir), 0o700);
    } catch (error) {
      throw new MetadataStoreError("io", `cannot prepare metadata dir ${dir}: ${(error as Error).message}`, { cause: error });
    }
    return new MetadataStore(dir, options.logger ?? silent);
  }

  async put(record: VolumeRecord): Promise<void> {
    const result = volumeRecordSchema.safeParse(record);
    if (!result.success) throw new MetadataStoreError("invalid-record", `invalid volume record: ${describeIssues(result.error)}`);
    try {
      await writeFileAtomic(this.pathOf(result.data.volumeId), `${JSON.stringify(result.data, null, 2)}\n`, { mode: 0o600, fsync: true });
    } catch (error) {
      throw new MetadataStoreError("io", `writing the record of ${record.volumeId} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  async get(volumeId: string): Promise<VolumeRecord | undefined> {
    const file = `${this.checkId(volumeId)}${recordSuffix}`;
    const outcome = await this.read(file);
    return outcome.kind === "record" ? outcome.record : undefined;
  }

  /** Deletes the record; a missing one is fine. The dir is fsynced so the delete survives a crash. */
  async delete(volumeId: string): Promise<void> {
    try {
      await unlink(this.pathOf(this.checkId(volumeId)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw new MetadataStoreError("io", `deleting the record of ${volumeId} failed: ${(error as Error).message}`, { cause: error });
    }
    await this.syncDir();
  }

  async list(): Promise<{ records: VolumeRecord[]; quarantined: QuarantinedRecord[] }> {
    const records: VolumeRecord[] = [];
    const quarantined: QuarantinedRecord[] = [];
    for (const entry of await readdir(this.dir, { withFileTypes: true })) {
      if (!entry.isFile()) continue;
      if (!entry.name.endsWith(recordSuffix)) {
        await this.sweepTempFile(entry.name);
        continue;
      }
      const outcome = await this.read(entry.name);
      if (outcome.kind === "record") records.push(outcome.record);
      else if (outcome.kind === "quarantined") quarantined.push(outcome.quarantined);
    }
    return { records, quarantined };
  }

  private async read(
    file: string,
  ): Promise<{ kind: "record"; record: VolumeRecord } | { kind: "quarantined"; quarantined: QuarantinedRecord } | { kind: "missing" }> {
    let text: string;
    try {
      text = await readFile(join(this.dir, file), "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return { kind: "missing" };
      throw new MetadataStoreError("io", `reading ${file} failed: ${(error as Error).message}`, { cause: error });
    }
    const reason = problemWith(text, file);
    if (typeof reason === "string") return { kind: "quarantined", quarantined: await this.quarantine(file, reason) };
    return { kind: "record", record: reason.record };
  }

  private async quarantine(file: string, reason: string): Promise<QuarantinedRecord> {
    const destination = join(quarantineDir, `${file}.${new Date().toISOString().replace(/[:.]/g, "-")}`);
    await rename(join(this.dir, file), join(this.dir, destination));
    await this.syncDir();
    this.logger.warn({ file, movedTo: destination, reason }, "quarantined an unreadable volume record");
    return { file, reason };
  }

  private async sweepTempFile(name: string): Promise<void> {
    if (!/\.json\.\d+$/.test(name)) return;
    const path = join(this.dir, name);
    const info = await stat(path).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > staleTempMs) {
      await unlink(path).catch(() => undefined);
      this.logger.info({ file: name }, "removed a temp file left by an interrupted record write");
    }
  }

  private checkId(volumeId: string): string {
    const result = volumeIdSchema.safeParse(volumeId);
    if (!result.success) throw new MetadataStoreError("invalid-record", `invalid volume record: volumeId: ${result.error.issues[0]?.message}`);
    return result.data;
  }

  private pathOf(volumeId: string): string {
    return join(this.dir, `${volumeId}${recordSuffix}`);
  }

  private async syncDir(): Promise<void> {
    const handle = await open(this.dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}

function problemWith(text: string, file: string): string | { record: VolumeRecord } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return `not JSON (${(error as Error).message})`;
  }
  const version = (json as { schemaVersion?: unknown } | null)?.schemaVersion;
  if (typeof json === "object" && json !== null && version !== currentSchemaVersion) {
    return `unsupported schemaVersion ${JSON.stringify(version)}`;
  }
  const result = volumeRecordSchema.safeParse(json);
  if (!result.success) return describeIssues(result.error);
  if (`${result.data.volumeId}${recordSuffix}` !== file) return `volumeId ${result.data.volumeId} does not match the file name`;
  return { record: result.data };
}
