import { z } from "zod";
import { DriverError } from "../errors.js";

export const attributePrefix = "csi.spire.io/";

const portableFileName = z
  .string()
  .min(1, "must not be empty")
  .max(128, "must be at most 128 characters")
  .regex(/^[A-Za-z0-9._-]+$/, "must use only the portable characters A-Z a-z 0-9 . _ -")
  .refine((name) => !name.startsWith(".."), "must not start with '..' (reserved for snapshot dirs)")
  .refine((name) => name !== ".", "must not be '.'");

const fsGroup = z
  .string()
  .regex(/^[0-9]+$/, "must be a decimal group id")
  .transform(Number)
  .pipe(z.number().int().min(1, "must not be 0 (root)").max(2_147_483_647, "must be below 2^31"));

/**
 * The per-volume options a pod may set through volumeAttributes. Unknown csi.spire.io/* keys are
 * rejected so a typo never silently falls back to a default. Nothing here can change which
 * identity a pod receives: selectors come from kubelet's pod info only.
 */
export const volumeAttributesSchema = z.strictObject({
  "csi.spire.io/layout": z.enum(["kubernetes-tls"]).default("kubernetes-tls"),
  "csi.spire.io/cert-file": portableFileName.default("tls.crt"),
  "csi.spire.io/key-file": portableFileName.default("tls.key"),
  "csi.spire.io/bundle-file": portableFileName.default("ca.crt"),
  "csi.spire.io/fs-group": fsGroup.optional(),
});

export type VolumeAttributes = z.output<typeof volumeAttributesSchema>;

/** Picks the csi.spire.io/* keys out of volume_context and validates them. */
export function parseVolumeAttributes(volumeContext: Record<string, string>): {
  raw: Record<string, string>;
  attributes: VolumeAttributes;
} {
  const raw = Object.fromEntries(Object.entries(volumeContext).filter(([key]) => key.startsWith(attributePrefix)));
  const result = volumeAttributesSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const keys = issue.code === "unrecognized_keys" ? issue.keys : [String(issue.path[0] ?? "")];
    const rule =
      issue.code === "unrecognized_keys"
        ? `unknown attribute; known keys are ${Object.keys(volumeAttributesSchema.shape).join(", ")}`
        : issue.message;
    throw new DriverError("invalid-argument", `volume_context[${keys.join(", ")}]: ${rule}`);
  }
  const names = [result.data["csi.spire.io/cert-file"], result.data["csi.spire.io/key-file"], result.data["csi.spire.io/bundle-file"]];
  if (new Set(names).size !== names.length) {
    throw new DriverError("invalid-argument", "volume_context[csi.spire.io/cert-file, key-file, bundle-file]: file names must differ");
  }
  return { raw, attributes: result.data };
}
