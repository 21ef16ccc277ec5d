import { execFileSync } from "node:child_process";
import { RealNode } from "../../test/node/support/real-node.js";
import { distribution, type Distribution } from "../stats.js";

export type PodStartResult =
  | { notMeasured: string }
  | {
      oneByOne: number;
      atOnce: number;
      csi: { oneByOne: Distribution; atOnce: Distribution };
      emptyDir: { oneByOne: Distribution; atOnce: Distribution };
    };

/**
 * Why the real node cannot be brought up now, or undefined: it binds fixed ports (apiserver,
 * etcd, kubelet), so it must not start while another control plane runs on this machine.
 */
export function kubeApiserverRunning(): string | undefined {
  try {
    const pids = execFileSync("pgrep", ["-f", "kube-apiserver"], { encoding: "utf8" }).trim();
    return pids ? `a kube-apiserver is running on this machine (pid ${pids.split("\n").join(", ")}); the real node needs its ports` : undefined;
  } catch {
    // pgrep exits 1 when nothing matches.
    return undefined;
  }
}

/**
 * Pod start to Running on a real node (kubelet, containerd, the image, the chart, real SPIRE):
 * the same busybox pod with the csi.spire.io volume and with an emptyDir, one by one and at once.
 */
export async function measurePodStart(options: { oneByOne: number; atOnce: number }): Promise<PodStartResult> {
  const node = await RealNode.start();
  try {
    const serviceAccount = "bench";
    await node.kubectl(["-n", "default", "create", "serviceaccount", serviceAccount]);
    const spiffeId = `spiffe://${node.spire.trustDomain}/ns/default/sa/${serviceAccount}`;
    const selectors = ["k8s:ns:default", `k8s:sa:${serviceAccount}`];
    await node.spire.createEntry({ spiffeId, selectors });
    // The agent attests Delegated Identity callers with its k8s workload attestor here, so only
    // the driver's pod may ask it for SVIDs: a first pod with the volume running is what shows
    // the entry reached the agent, before anything is timed.
    await node.timeToRunning([node.podManifest("pod-start-warm-up", serviceAccount)]);
    await node.kubectl(["-n", "default", "delete", "pods", "-l", "test=real-node-start", "--wait=true", "--timeout=120s"]);
    const times = await node.podStartTimes({ serviceAccount, ...options });
    const summarise = (kind: keyof typeof times) => ({ oneByOne: distribution(times[kind].oneByOne), atOnce: distribution(times[kind].atOnce) });
    return { ...options, csi: summarise("csi"), emptyDir: summarise("emptyDir") };
  } finally {
    await node.stop();
  }
}
