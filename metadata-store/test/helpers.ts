import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import type { StoreLogger, VolumeRecord } from "../src/index.js";

/** A fresh `<tmp>/meta-XXXX/volumes` path (not yet created), removed after the test even if it fails. */
export async function tempStoreDir(t: TestContext): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "meta-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  return join(root, "volumes");
}

export function record(volumeId: string, overrides: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    schemaVersion: 1,
    volumeId,
    targetPath: `/var/lib/kubelet/pods/uid-${volumeId}/volumes/kubernetes.io~csi/spiffe/mount`,
    podUid: `uid-${volumeId}`,
    podName: "web-0",
    podNamespace: "demo",
    serviceAccount: "web",
    attributes: { "csi.spire.io/cert-file": "svid.pem" },
    readOnly: true,
    createdAt: "2026-11-24T10:00:00.000Z",
    ...overrides,
  };
}

export function collectingLogger(): { warnings: { details: object; message: string }[]; infos: { details: object; message: string }[]; logger: StoreLogger } {
  const warnings: { details: object; message: string }[] = [];
  const infos: { details: object; message: string }[] = [];
  return {
    warnings,
    infos,
    logger: {
      warn: (details, message) => void warnings.push({ details, message }),
      info: (details, message) => void infos.push({ details, message }),
    },
  };
}
