import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Structured JSON logs on stdout. Certificates, keys and tokens are never passed to the logger;
 * the redaction list is a second line of defence for fields that could carry them by mistake.
 */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "spire-csi-driver" },
    redact: {
      paths: ["*.key", "*.token", "*.keyPkcs8Der", "*.certChainDer", "*.secrets", "*.content"],
      censor: "[redacted]",
    },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
