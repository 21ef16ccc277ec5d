export { MetadataStore, type QuarantinedRecord, type StoreLogger } from "./metadata-store.js";
export { MetadataStoreError, type MetadataStoreErrorCode } from "./errors.js";
export { currentSchemaVersion, volumeRecordSchema, type VolumeRecord } from "./volume-record.js";
