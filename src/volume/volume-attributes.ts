import { z } from "zod";
import { DriverError } from "../errors.js";
import { keystoreFileName, truststoreFileName, type Layout, type LayoutOptions } from "../files/volume-files.js";

export const attributePrefix = "csi.spire.io/";

export const layouts = ["kubernetes-tls", "spiffe-helper", "spiffe-fs"] as const satisfies readonly Layout[];

/** File names each layout uses unless the volume overrides them. */
export const defaultFileNames: Record<Exclude<Layout, "spiffe-fs">, { cert: string; key: string; bundle: string }> = {
  "kubernetes-tls": { cert: "tls.crt", key: "tls.key", bundle: "ca.crt" },
  "spiffe-helper": { cert: "svid.pem", key: "svid_key.pem", bundle: "svid_bundle.pem" },
};

const portableFileName = z
  .string()
  .min(1, "must not be empty")
  .max(128, "must be at most 128 characters")
  .regex(/^[A-Za-z0-9._-]+$/, "must use only the portable characters A-Z a-z 0-9 . _ -")
  .refine((name) => !name.startsWith(".."), "must not start with '..' (reserved for snapshot dirs)")
  .refine((name) => name !== ".", "must not be '.'");

const booleanText = z.enum(["true", "false"], { message: 'must be "true" or "false"' }).transform((text) => text === "true");

const fsGroup = z
  .string()
  .regex(/^[0-9]+$/, "must be a decimal group id")
  .transform(Number)
  .pipe(z.number().int().min(1, "must not be 0 (root)").max(2_147_483_647, "must be below 2^31"));

const audiences = z
  .string()
  .transform((text) => text.split(",").map((audience) => audience.trim()))
  .pipe(
    z
      .array(
        z
          .string()
          .min(1, "must not contain an empty audience")
          .max(256, "audiences must be at most 256 characters")
          .regex(/^[\x21-\x7e]+$/, "audiences must be printable ASCII without spaces"),
      )
      .min(1)
      .max(10, "at most 10 audiences per volume")
      .refine((list) => new Set(list).size === list.length, "audiences must not repeat"),
  );

const spiffeId = z
  .string()
  .max(2048, "must be at most 2048 characters")
  .regex(/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$/, "must be a SPIFFE ID like spiffe://example.org/ns/default/sa/web");

const fileMode = z
  .string()
  .regex(/^0?[0-7]{3}$/, "must be an octal file mode like 0600 or 0440")
  .transform((text) => parseInt(text, 8));

const secretName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._:-]+$/, "must use only A-Z a-z 0-9 . _ : -");

/**
 * The per-volume options a pod may set through volumeAttributes. Unknown csi.spire.io/* keys are
 * rejected so a typo never silently falls back to a default. Nothing here can widen which
 * identity a pod receives: selectors come from kubelet's pod info only, and `spiffe-id` /
 * `svid-hint` only choose among the SVIDs the agent issues for those selectors.
 */
export const volumeAttributesSchema = z.strictObject({
  "csi.spire.io/layout": z.enum(layouts, { message: `must be one of ${layouts.join(", ")}` }).default("kubernetes-tls"),
  "csi.spire.io/cert-file": portableFileName.optional(),
  "csi.spire.io/key-file": portableFileName.optional(),
  "csi.spire.io/bundle-file": portableFileName.optional(),
  "csi.spire.io/credential-file": portableFileName.optional(),
  "csi.spire.io/federated-bundles": z
    .enum(["files", "merge", "none"], { message: "must be files, merge or none" })
    .default("files"),
  "csi.spire.io/bundle-intermediates": booleanText.default(false),
  "csi.spire.io/spiffe-id": spiffeId.optional(),
  "csi.spire.io/svid-hint": z.string().min(1).max(256).optional(),
  "csi.spire.io/all-svids": booleanText.default(false),
  "csi.spire.io/jwt-audiences": audiences.optional(),
  "csi.spire.io/envoy-sds": booleanText.default(false),
  "csi.spire.io/envoy-sds-file": portableFileName.default("envoy-sds.json"),
  "csi.spire.io/envoy-cert-secret": secretName.default("default"),
  "csi.spire.io/envoy-ca-secret": secretName.default("ROOTCA"),
  "csi.spire.io/envoy-validator": z.enum(["spiffe", "trusted-ca"], { message: "must be spiffe or trusted-ca" }).default("spiffe"),
  "csi.spire.io/fs-group": fsGroup.optional(),
  "csi.spire.io/key-mode": fileMode.optional(),
  "csi.spire.io/keystore": z.enum(["pkcs12"], { message: "must be pkcs12" }).optional(),
  "csi.spire.io/keystore-password": z
    .string()
    .min(1, "must not be empty")
    .max(128, "must be at most 128 characters")
    .regex(/^[\x20-\x7e]+$/, "must be printable ASCII (Java and OpenSSL encode other characters differently)")
    .optional(),
  "csi.spire.io/bundle-only": booleanText.default(false),
});

type ParsedAttributes = z.output<typeof volumeAttributesSchema>;

/** The validated attributes with every file name resolved for the chosen layout. */
export interface VolumeAttributes extends LayoutOptions {
  /** Which of the pod's SVIDs to write when the agent sends several. */
  select: { spiffeId: string | undefined; hint: string | undefined };
  fsGroup: number | undefined;
  /** Mode of the files holding a key or token; undefined keeps the default for the fsGroup. */
  keyMode: number | undefined;
}

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
  return { raw, attributes: resolve(result.data) };
}

/**
 * The key-mode ceiling depends on the fsGroup, which kubelet may send instead of the attribute,
 * so publish and re-adoption of a record both check it once the group is known.
 */
export function checkKeyMode(keyMode: number | undefined, fsGroup: number | undefined): void {
  if (keyMode === undefined) return;
  const ceiling = fsGroup === undefined ? 0o644 : 0o640;
  const octal = (mode: number) => `0${mode.toString(8).padStart(3, "0")}`;
  if ((keyMode & ~ceiling) !== 0) {
    reject(
      "key-mode",
      `${octal(keyMode)} grants more than ${octal(ceiling)}, the most allowed ${fsGroup === undefined ? "without an fsGroup" : "with an fsGroup (never world-readable)"}`,
    );
  }
  if ((keyMode & 0o444) === 0) reject("key-mode", `${octal(keyMode)} lets nobody read the key; use e.g. 0400 or 0440`);
}

function reject(key: string, rule: string): never {
  throw new DriverError("invalid-argument", `volume_context[${attributePrefix}${key}]: ${rule}`);
}

function resolve(parsed: ParsedAttributes): VolumeAttributes {
  const layout = parsed["csi.spire.io/layout"];
  const bundleOnly = parsed["csi.spire.io/bundle-only"];
  if (bundleOnly) {
    // Attributes that shape an SVID's files have nothing to act on without one.
    const svidOnly = ["cert-file", "key-file", "credential-file", "spiffe-id", "svid-hint", "key-mode", "jwt-audiences", "all-svids", "envoy-sds", "bundle-intermediates"];
    for (const key of svidOnly) {
      const value = parsed[`${attributePrefix}${key}` as keyof ParsedAttributes];
      if (value !== undefined && value !== false) reject(key, "is not used by a bundle-only volume (it holds no SVID)");
    }
  }
  const given = {
    cert: parsed["csi.spire.io/cert-file"],
    key: parsed["csi.spire.io/key-file"],
    bundle: parsed["csi.spire.io/bundle-file"],
    credential: parsed["csi.spire.io/credential-file"],
  };
  let files: VolumeAttributes["files"];
  if (layout === "spiffe-fs") {
    for (const name of ["cert", "key", "bundle"] as const) {
      if (given[name]) reject(`${name}-file`, "is not used by layout spiffe-fs (it writes credential-bundle.pem and <trust-domain>.trust-bundle.pem)");
    }
    if (parsed["csi.spire.io/federated-bundles"] === "merge") {
      reject("federated-bundles", "layout spiffe-fs keeps one file per trust domain; merge is not allowed");
    }
    files = { cert: "", key: "", bundle: "", credential: given.credential ?? "credential-bundle.pem" };
  } else {
    if (given.credential) reject("credential-file", "is only used by layout spiffe-fs");
    const defaults = defaultFileNames[layout];
    files = { cert: given.cert ?? defaults.cert, key: given.key ?? defaults.key, bundle: given.bundle ?? defaults.bundle, credential: "" };
  }
  const envoySds = parsed["csi.spire.io/envoy-sds"]
    ? {
        file: parsed["csi.spire.io/envoy-sds-file"],
        certSecret: parsed["csi.spire.io/envoy-cert-secret"],
        caSecret: parsed["csi.spire.io/envoy-ca-secret"],
        validator: parsed["csi.spire.io/envoy-validator"],
      }
    : undefined;
  if (envoySds && envoySds.certSecret === envoySds.caSecret) reject("envoy-ca-secret", "must differ from envoy-cert-secret");
  const jwt = (parsed["csi.spire.io/jwt-audiences"] ?? []).map((audience) => ({
    audience,
    file: `jwt-${audience.replace(/[^A-Za-z0-9._-]/g, "_")}.token`,
  }));
  if (new Set(jwt.map((entry) => entry.file)).size !== jwt.length) {
    reject("jwt-audiences", "two audiences map to the same file name (characters outside A-Z a-z 0-9 . _ - become _)");
  }
  const keystore = parsed["csi.spire.io/keystore"] ? { password: parsed["csi.spire.io/keystore-password"] ?? "changeit" } : undefined;
  if (!keystore && parsed["csi.spire.io/keystore-password"] !== undefined) reject("keystore-password", "is only used with csi.spire.io/keystore: pkcs12");
  const keystoreNames = keystore ? (bundleOnly ? [truststoreFileName] : [keystoreFileName, truststoreFileName]) : [];
  const names = [files.cert, files.key, files.bundle, files.credential, envoySds?.file ?? "", ...keystoreNames].filter((name) => name !== "");
  if (new Set(names).size !== names.length) {
    throw new DriverError("invalid-argument", "volume_context[csi.spire.io/cert-file, key-file, bundle-file, envoy-sds-file]: file names must differ (and not be keystore.p12 or truststore.p12 with a keystore)");
  }
  return {
    layout,
    files,
    federatedBundles: parsed["csi.spire.io/federated-bundles"],
    bundleIntermediates: parsed["csi.spire.io/bundle-intermediates"],
    select: { spiffeId: parsed["csi.spire.io/spiffe-id"], hint: parsed["csi.spire.io/svid-hint"] },
    allSvids: parsed["csi.spire.io/all-svids"],
    jwt,
    envoySds,
    fsGroup: parsed["csi.spire.io/fs-group"],
    keyMode: parsed["csi.spire.io/key-mode"],
    keystore,
    bundleOnly,
  };
}
