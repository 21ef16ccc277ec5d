/** One file of a volume snapshot. `secret` files (private keys, tokens) get the tighter mode. */
export interface SnapshotFile {
  name: string;
  content: string | Uint8Array;
  secret: boolean;
}
