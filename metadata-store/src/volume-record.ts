import { isAbsolute } from "node:path";
import { z } from "zod";

export const currentSchemaVersion = 1;

export const volumeIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9._-]{1,128}$/, "must be 1-128 characters of A-Z a-z 0-9 . _ -")
  .refine((id) => id !== "." && id !== "..", "must not be . or ..");

/**
 * Version 1 of the per-volume record: what the driver needs to re-adopt a volume after a restart.
 * It never holds key material or tokens. Unknown keys are rejected so a record written by a newer
 * driver with a different meaning is quarantined rather than half-understood.
 */
export const volumeRecordSchema = z.strictObject({
  schemaVersion: z.literal(currentSchemaVersion),
  volumeId: volumeIdSchema,
  targetPath: z.string().refine(isAbsolute, "must be an absolute path"),
  podUid: z.string().min(1, "must not be empty"),
  podName: z.string().min(1, "must not be empty"),
  podNamespace: z.string().min(1, "must not be empty"),
  serviceAccount: z.string().min(1, "must not be empty"),
  attributes: z.record(z.string(), z.string()),
  fsGroup: z.number().int().min(0).max(2_147_483_647).optional(),
  readOnly: z.boolean(),
  createdAt: z.iso.datetime({ message: "must be an ISO 8601 timestamp" }),
});

export type VolumeRecord = z.infer<typeof volumeRecordSchema>;

/** "field: rule" of the first problem, for error messages and quarantine reasons. */
export function describeIssues(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "invalid";
  const path = issue.path.length > 0 ? issue.path.join(".") : "(record)";
  return `${path}: ${issue.message}`;
}
