export type MetadataStoreErrorCode = "invalid-record" | "io";

/** The one error type of the store; `code` tells a bad record from a failing filesystem. */
export class MetadataStoreError extends Error {
  override readonly name = "MetadataStoreError";

  constructor(
    readonly code: MetadataStoreErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
