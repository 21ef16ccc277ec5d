export { MetadataStore, type MetadataStoreOptions, type QuarantinedRecord, type StoreLogger } from "./metadata-store.js";
export { MetadataStoreError, type MetadataStoreErrorCode } from "./errors.js";
export { currentSchemaVersion, volumeIdSchema, volumeRecordSchema, type VolumeRecord } from "./volume-record.js";
