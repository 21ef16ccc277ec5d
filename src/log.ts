import { pino, type DestinationStream, type Logger } from "pino";

export type { Logger };

const censor = "[redacted]";
/** Field names that only ever hold key material, tokens or file contents, compared in lower case. */
const secretFieldNames = new Set([
  "key",
  "privatekey",
  "x509svidkey",
  "keypkcs8der",
  "certchainder",
  "token",
  "jwt",
  "secret",
  "secrets",
  "password",
  "content",
  "contents",
]);
/** Values that are key material whatever field they are in: PEM blocks and compact JWTs. */
const secretValuePatterns = [/-----BEGIN [A-Z0-9 ]+-----/, /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/];
/** Deeper than any object the driver logs; past it a value is dropped rather than walked. */
const maxDepth = 32;

/**
 * A copy of a log field with secrets replaced, at any depth: fields named like key material,
 * strings holding a PEM block or a JWT, and raw bytes (DER keys and certificates arrive as
 * Uint8Array). Errors are left to pino's serializer; the driver puts no key material in messages.
 */
export function redactDeep(value: unknown, depth = 0, seen = new WeakSet<object>()): unknown {
  if (typeof value === "string") return secretValuePatterns.some((pattern) => pattern.test(value)) ? censor : value;
  if (value === null || typeof value !== "object" || value instanceof Error) return value;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return censor;
  if (depth >= maxDepth || seen.has(value)) return censor;
  seen.add(value);
  if (Array.isArray(value)) return value.map((item) => redactDeep(item, depth + 1, seen));
  if (value instanceof Map) return redactDeep(Object.fromEntries(value), depth, seen);
  const copy: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(value)) {
    copy[name] = secretFieldNames.has(name.toLowerCase()) ? censor : redactDeep(field, depth + 1, seen);
  }
  return copy;
}

/**
 * Structured JSON logs on stdout with the level as a name (`"level":"info"`), which is what
 * operators grep for. Certificates, keys and tokens are never passed to the logger; redaction of
 * every field and every child binding is a second line of defence for a value that slips through.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const logger = pino(
    {
      level,
      base: { service: "spire-csi-driver" },
      formatters: {
        level: (label) => ({ level: label }),
        log: (object) => redactDeep(object) as Record<string, unknown>,
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
  // pino serialises a child's bindings once, when the child is made, and skips the formatters
  // there; children are made with Object.create(parent), so every descendant inherits this.
  const makeChild = logger.child;
  logger.child = function (this: Logger, bindings, options) {
    return makeChild.call(this, redactDeep(bindings) as typeof bindings, options);
  } as Logger["child"];
  return logger;
}
