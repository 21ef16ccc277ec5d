/**
 * The bench's scenarios by name, for `--scenarios a,b`. Each fills one part of the report; a
 * scenario left out is reported as not measured, never as met.
 */
export const scenarioNames = [
  /** Fake agent: publish latency at 1, 110, 250 pods, tmpfs and directory backing. */
  "publish",
  /** Fake agent: idle RSS, RSS at 250 volumes, marginal bytes per volume, idle CPU. */
  "memory",
  /** Fake agent: one push re-issues 250 SVIDs, against the plain-fs floor. */
  "rotation",
  /** Fake agent and real SPIRE: SIGKILL with 250 volumes, all re-adopted. */
  "restart",
  /** Real SPIRE: publish latency at 1, 110, 250 pods. */
  "spire-publish",
  /** Real SPIRE: memory and agent cost against spiffe-helper for N workloads. */
  "spiffe-helper",
  /** Real SPIRE: 20 publishes + 20 unpublishes per second, then nothing leaked. */
  "churn",
  /** Real node (kubelet, containerd, the chart): pod start with the volume vs emptyDir. */
  "pod-start",
] as const;

export type ScenarioName = (typeof scenarioNames)[number];

/** The scenarios a comma-separated list names; throws naming an unknown one and the valid names. */
export function parseScenarios(list: string): Set<ScenarioName> {
  const names = list.split(",").map((name) => name.trim()).filter(Boolean);
  const unknown = names.filter((name) => !(scenarioNames as readonly string[]).includes(name));
  if (unknown.length > 0) throw new Error(`--scenarios: unknown ${unknown.join(", ")}; choose from ${scenarioNames.join(", ")}`);
  if (names.length === 0) throw new Error(`--scenarios: name at least one of ${scenarioNames.join(", ")}`);
  return new Set(names as ScenarioName[]);
}
