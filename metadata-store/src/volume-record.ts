import { isAbsolute } from "node:path";
import { z } from "zod";

/**
 * The record's major version. It changes only when the meaning of an existing field changes or a
 * new field becomes required to re-adopt a volume safely; a new optional field never bumps it.
 * So a reader keeps a record of its own major version whose extra fields it does not know (a newer
 * driver added them, and a rollback must not strand live volumes), and quarantines a record of a
 * higher major version, which it could only half understand (docs/upgrade.md, Rolling back).
 */
export const currentSchemaVersion = 1;

/**
 * kubelet sends "csi-<64 hex>", but any 1-128 characters of [A-Za-z0-9._-] are accepted. The id
 * becomes a file name, so "/" is impossible and "." / ".." are refused: a record can never be
 * written outside the store's directory.
 */
export const volumeIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9._-]{1,128}$/, "must be 1-128 characters of A-Z a-z 0-9 . _ -")
  .refine((id) => id !== "." && id !== "..", "must not be . or ..");

/**
 * Version 1 of the per-volume record: what the driver needs to re-adopt a volume after a restart.
 * It never holds key material or tokens.
 */
const volumeRecordFields = {
  schemaVersion: z.literal(currentSchemaVersion),
  volumeId: volumeIdSchema,
  targetPath: z
    .string()
    .refine((path) => isAbsolute(path), "must be an absolute path")
    .refine((path) => !path.includes("\0"), "must not contain NUL"),
  podUid: z.string().min(1, "must not be empty"),
  podName: z.string().min(1, "must not be empty"),
  podNamespace: z.string().min(1, "must not be empty"),
  serviceAccount: z.string().min(1, "must not be empty"),
  attributes: z.record(z.string(), z.string()),
  fsGroup: z.number().int("must be an integer").min(0, "must be >= 0").max(2_147_483_647, "must be <= 2147483647").optional(),
  readOnly: z.boolean(),
  createdAt: z.iso.datetime({ offset: true, message: "must be an ISO 8601 timestamp" }),
};

/** What the driver writes: exactly these fields, so an unknown key is refused rather than stored. */
export const volumeRecordSchema = z.strictObject(volumeRecordFields);

/**
 * What the driver reads: the same rules for every field it knows; fields it does not know are
 * dropped from the parsed record (never passed along), for the caller to report by name.
 */
export const storedVolumeRecordSchema = z.object(volumeRecordFields);

export const knownRecordFields: ReadonlySet<string> = new Set(Object.keys(volumeRecordFields));

export type VolumeRecord = z.infer<typeof volumeRecordSchema>;

/**
 * "field: rule" for each problem (joined with "; "), for error messages and quarantine reasons.
 * Unknown keys of the strict object have no path of their own, so the keys are named instead.
 */
export function describeIssues(error: z.ZodError): string {
  const parts = error.issues.map((issue) => {
    if (issue.code === "unrecognized_keys") {
      const prefix = issue.path.length > 0 ? `${issue.path.join(".")}.` : "";
      return issue.keys.map((key) => `${prefix}${key}: unknown field`).join("; ");
    }
    const path = issue.path.length > 0 ? issue.path.map(String).join(".") : "(record)";
    return `${path}: ${issue.message}`;
  });
  return parts.length > 0 ? parts.join("; ") : "invalid";
}
