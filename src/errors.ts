/**
 * The one error type the driver raises. Its `code` says what went wrong in CSI terms; the CSI edge
 * (csi/grpc-status.ts) is the only place that turns it into a gRPC status.
 */
export type DriverErrorCode =
  | "invalid-argument"
  | "already-exists"
  | "failed-precondition"
  | "deadline-exceeded"
  | "unavailable"
  | "resource-exhausted"
  | "internal";

export class DriverError extends Error {
  override readonly name = "DriverError";

  constructor(
    readonly code: DriverErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function invalidArgument(field: string, rule: string): DriverError {
  return new DriverError("invalid-argument", `${field}: ${rule}`);
}
