import type { PodInfo } from "./volume-spec.js";

export interface Selector {
  type: string;
  value: string;
}

/**
 * The selectors SPIRE's k8s workload attestor would produce for the pod, so existing
 * registration entries (including spire-controller-manager's) match. Built only from kubelet's
 * pod info and the node name, never from volume attributes: a pod cannot claim another identity.
 */
export function podSelectors(pod: PodInfo, nodeName: string): Selector[] {
  return [
    { type: "k8s", value: `ns:${pod.namespace}` },
    { type: "k8s", value: `sa:${pod.serviceAccount}` },
    { type: "k8s", value: `pod-uid:${pod.uid}` },
    { type: "k8s", value: `pod-name:${pod.name}` },
    { type: "k8s", value: `node-name:${nodeName}` },
  ];
}

export function formatSelectors(selectors: readonly Selector[]): string {
  return selectors.map((selector) => `${selector.type}:${selector.value}`).join(" ");
}
