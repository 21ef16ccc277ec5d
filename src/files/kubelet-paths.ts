import { realpath } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { invalidArgument } from "../errors.js";

/**
 * Where kubelet keeps pod volumes: `podsDir` as configured (`<kubelet-root>/pods`, the prefix
 * kubelet's target paths carry) and its real path. Resolved once at start: `/var/lib/kubelet` is
 * itself a symlink on some distributions, and a link planted later must not move it.
 */
export interface KubeletPaths {
  /** `--kubelet-root`, normalised. */
  root: string;
  podsDir: string;
  podsRealPath: string;
}

export async function resolveKubeletPaths(kubeletRoot: string): Promise<KubeletPaths> {
  const podsDir = join(kubeletRoot, "pods");
  // kubelet creates pods/ at its own start; before that, only the root can be resolved.
  const podsRealPath = await realpath(podsDir).catch(async () => join(await realpath(kubeletRoot).catch(() => kubeletRoot), "pods"));
  return { root: kubeletRoot, podsDir, podsRealPath };
}

/** Where a target lies: inside the pods dir, outside it through a symlink, or gone (its parent does not exist). */
export type TargetPlace = { kind: "inside" } | { kind: "absent" } | { kind: "outside"; parent: string; real: string; expected: string };

/**
 * The target's parent, with every symlink resolved, must be exactly where kubelet's path says
 * below the real pods dir. kubelet makes no symlinks there, so any link on the way (a pod dir
 * pointing outside, say) is planted, and following it would mount a tmpfs and write a key
 * outside the kubelet root.
 */
export async function placeOfTarget(targetPath: string, paths: KubeletPaths): Promise<TargetPlace> {
  const parent = dirname(targetPath);
  const real = await realpath(parent).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return undefined;
    throw error;
  });
  if (real === undefined) return { kind: "absent" };
  const expected = join(paths.podsRealPath, relative(paths.podsDir, parent));
  return real === expected ? { kind: "inside" } : { kind: "outside", parent, real, expected };
}

/** placeOfTarget as a publish needs it: anything but "inside" is an INVALID_ARGUMENT naming the reason. */
export async function requireUnderPods(targetPath: string, paths: KubeletPaths): Promise<void> {
  const place = await placeOfTarget(targetPath, paths);
  if (place.kind === "absent") {
    throw invalidArgument("target_path", `its parent dir ${dirname(targetPath)} does not exist (kubelet creates it before publishing)`);
  }
  if (place.kind === "outside") {
    throw invalidArgument("target_path", `${place.parent} resolves to ${place.real}, not ${place.expected}: a symlink below ${paths.podsDir} is never followed`);
  }
}
