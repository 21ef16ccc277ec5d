import { status, type ServiceError, Metadata } from "@grpc/grpc-js";
import { DriverError, type DriverErrorCode } from "../errors.js";

const statusOf: Record<DriverErrorCode, status> = {
  "invalid-argument": status.INVALID_ARGUMENT,
  "already-exists": status.ALREADY_EXISTS,
  "failed-precondition": status.FAILED_PRECONDITION,
  "deadline-exceeded": status.DEADLINE_EXCEEDED,
  unavailable: status.UNAVAILABLE,
  "resource-exhausted": status.RESOURCE_EXHAUSTED,
  internal: status.INTERNAL,
};

/** The one place driver errors become gRPC statuses. Anything unexpected is INTERNAL. */
export function toServiceError(error: unknown): Partial<ServiceError> {
  if (error instanceof DriverError) {
    return { code: statusOf[error.code], details: error.message, metadata: new Metadata() };
  }
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOSPC") {
    return { code: status.RESOURCE_EXHAUSTED, details: `no space left writing the volume: ${(error as Error).message}` };
  }
  return { code: status.INTERNAL, details: `internal error: ${(error as Error | undefined)?.message ?? String(error)}` };
}
