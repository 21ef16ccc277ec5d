import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startSpire, type SpireFixture } from "../../support/spire-fixture.js";

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));
const imageRepository = "ghcr.io/spire-csi-driver/spire-csi-driver";
export const namespace = "spire-system";
export const release = "spire-csi-driver";
export const chartPath = join(repoRoot, "charts/spire-csi-driver");

/** Runs a command; on failure the error carries its stderr. */
async function sh(file: string, args: string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const child = run(file, args, { maxBuffer: 64 * 1024 * 1024, timeout: options.timeoutMs ?? 120_000, env: options.env ?? process.env });
  if (options.input !== undefined) {
    child.child.stdin!.end(options.input);
  }
  try {
    return (await child).stdout;
  } catch (error) {
    const failed = error as Error & { stderr?: string; stdout?: string };
    throw new Error(`${file} ${args.join(" ")} failed: ${failed.message}\n${failed.stderr ?? ""}`);
  }
}

/** Polls `check` until it returns a value other than undefined; throws with `what` and the last error. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = (error as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${last})` : ""}`);
    await sleep(500);
  }
}

export interface PodManifestOptions {
  volumeAttributes?: Record<string, string>;
  fsGroup?: number;
  runAsUser?: number;
  /** An emptyDir instead of the csi.spire.io volume: the baseline of pod start times. */
  emptyDir?: boolean;
}

/** What the real-node suite takes from a pod in examples/: its csi.spire.io volume and who it runs as. */
export interface ExamplePod {
  name: string;
  serviceAccount: string | undefined;
  options: PodManifestOptions & { volumeAttributes: Record<string, string> };
}

/** Milliseconds from create to Running, per pod, for each kind of volume. */
export type PodStartTimes = Record<"csi" | "emptyDir", { oneByOne: number[]; atOnce: number[] }>;

interface NodeEnv {
  KUBECONFIG: string;
  KUBECTL: string;
  NODE_NAME: string;
  KUBELET_ROOT: string;
  CONTAINERD_SOCKET: string;
  PKI_DIR: string;
}

/**
 * A real single-node Kubernetes (scripts/real-node/up.sh) with the driver image built from the
 * Dockerfile (scripts/image/build.sh, two tags for upgrades), imported into containerd, a real
 * SPIRE v1.15.3 server and agent on the host (admin socket with authorized_delegates; the driver's
 * delegate entry selects its pod through the agent's k8s workload attestor, as docs/install.md
 * wires it), and the chart installed with helm.
 */
export class RealNode {
  readonly metadataDir: string;
  private helmBin = "";
  private env!: NodeEnv;

  private spireFixture?: SpireFixture;

  private constructor(readonly dir: string) {
    this.metadataDir = join(dir, "driver-metadata");
  }

  get spire(): SpireFixture {
    if (this.spireFixture === undefined) throw new Error("SPIRE is not started yet");
    return this.spireFixture;
  }

  static readonly tags = ["node-test-1", "node-test-2"] as const;

  static async start(): Promise<RealNode> {
    const dir = await mkdtemp("/tmp/spire-csi-node-");
    const node = new RealNode(dir);
    try {
      const peers = (await sh("bash", [join(repoRoot, "scripts/build-peers.sh"), "helm", "spire-server", "spire-agent"], { timeoutMs: 30 * 60_000 })).trim().split("\n").pop()!;
      node.helmBin = join(peers, "helm-v3.22.0");
      for (const tag of RealNode.tags) {
        await sh("bash", [join(repoRoot, "scripts/image/build.sh"), `${imageRepository}:${tag}`, join(dir, `${tag}.tar`)], { timeoutMs: 20 * 60_000 });
      }
      await sh("bash", [join(repoRoot, "scripts/real-node/up.sh"), join(dir, "node")], { timeoutMs: 40 * 60_000 });
      const envText = await readFile(join(dir, "node", "env"), "utf8");
      node.env = Object.fromEntries(envText.trim().split("\n").map((line) => line.split(/=(.*)/s).slice(0, 2))) as unknown as NodeEnv;
      for (const tag of RealNode.tags) {
        await sh("ctr", ["--address", node.env.CONTAINERD_SOCKET, "-n", "k8s.io", "images", "import", join(dir, `${tag}.tar`)], { timeoutMs: 300_000 });
      }
      // SPIRE after the node: the agent's k8s workload attestor needs the kubelet and its PKI. The
      // driver's delegate entry is the one docs/install.md registers: its namespace and ServiceAccount.
      const pki = node.env.PKI_DIR;
      node.spireFixture = await startSpire({
        kubeletAttestor: { nodeName: node.env.NODE_NAME, caFile: join(pki, "ca.crt"), certFile: join(pki, "spire-agent.crt"), keyFile: join(pki, "spire-agent.key") },
      });
      await node.spire.registerDelegate([`k8s:ns:${namespace}`, `k8s:sa:${release}`]);
      await node.helm(["install", release, chartPath, "--namespace", namespace, "--create-namespace", ...node.values(RealNode.tags[0]), "--wait", "--timeout", "180s"]);
    } catch (error) {
      await node.stop();
      throw error;
    }
    return node;
  }

  get nodeName(): string {
    return this.env.NODE_NAME;
  }

  get kubeletRoot(): string {
    return this.env.KUBELET_ROOT;
  }

  /** The values an operator sets for this node (image tag, kubelet root, agent admin socket dir). */
  values(tag: string): string[] {
    return [
      "--set", `image.tag=${tag}`,
      "--set", `kubeletRoot=${this.env.KUBELET_ROOT}`,
      "--set", `metadataDir=${this.metadataDir}`,
      "--set", `agent.adminSocketDir=${join(this.spire.dir, "admin")}`,
      "--set", "agent.adminSocketName=admin.sock",
      "--set", `spire.delegateSpiffeId=${this.spire.delegateId}`,
    ];
  }

  helm(args: string[]): Promise<string> {
    return sh(this.helmBin, args, { env: { ...process.env, KUBECONFIG: this.env.KUBECONFIG }, timeoutMs: 300_000 });
  }

  kubectl(args: string[], input?: string): Promise<string> {
    return sh(this.env.KUBECTL, ["--kubeconfig", this.env.KUBECONFIG, ...args], { input, timeoutMs: 120_000 });
  }

  async json<T>(args: string[]): Promise<T> {
    return JSON.parse(await this.kubectl([...args, "-o", "json"])) as T;
  }

  /** `kubectl exec` in the pod's first container; returns stdout. */
  exec(pod: string, command: string[], ns = "default"): Promise<string> {
    return this.kubectl(["-n", ns, "exec", pod, "--", ...command]);
  }

  /** Copies a file out of the pod byte for byte: through base64, as `kubectl exec` output is read as text. */
  async copyOut(pod: string, path: string, destination: string): Promise<void> {
    await writeFile(destination, Buffer.from(await this.exec(pod, ["base64", path]), "base64"));
  }

  /**
   * The Pod in examples/<file> as kubectl parses it (so a test and the example it stands for cannot
   * drift): the attributes of its csi.spire.io volume and its pod securityContext's user and fsGroup.
   */
  async examplePod(file: string): Promise<ExamplePod> {
    type Pod = {
      kind: string;
      metadata: { name: string };
      spec: {
        serviceAccountName?: string;
        securityContext?: { runAsUser?: number; runAsGroup?: number; fsGroup?: number };
        volumes?: { csi?: { driver: string; volumeAttributes?: Record<string, string> } }[];
      };
    };
    // One document at a time: `kubectl create -o json` prints several objects back to back, not as a List.
    const documents = (await readFile(join(repoRoot, "examples", file), "utf8")).split(/^---$/m).filter((document) => /^kind: Pod$/m.test(document));
    const pods: Pod[] = [];
    for (const document of documents) pods.push(JSON.parse(await this.kubectl(["create", "--dry-run=client", "-o", "json", "-f", "-"], document)) as Pod);
    if (pods.length !== 1) throw new Error(`examples/${file}: expected one Pod, found ${pods.length}`);
    const pod = pods[0]!;
    const volumes = (pod.spec.volumes ?? []).filter((volume) => volume.csi?.driver === "csi.spire.io");
    if (volumes.length !== 1) throw new Error(`examples/${file}: expected one csi.spire.io volume, found ${volumes.length}`);
    const security = pod.spec.securityContext ?? {};
    // podManifest runs the container with group = user; an example that differs needs podManifest extended.
    if (security.runAsGroup !== undefined && security.runAsGroup !== security.runAsUser) throw new Error(`examples/${file}: runAsGroup ${security.runAsGroup} differs from runAsUser`);
    return {
      name: pod.metadata.name,
      serviceAccount: pod.spec.serviceAccountName,
      options: {
        volumeAttributes: volumes[0]!.csi!.volumeAttributes ?? {},
        ...(security.fsGroup !== undefined ? { fsGroup: security.fsGroup } : {}),
        ...(security.runAsUser !== undefined ? { runAsUser: security.runAsUser } : {}),
      },
    };
  }

  /** An image label as buildah reads it from containers-storage. */
  async imageLabel(tag: string, label: string): Promise<string> {
    return (await sh("buildah", ["inspect", "--type", "image", "--format", `{{index .OCIv1.Config.Labels "${label}"}}`, `${imageRepository}:${tag}`])).trim();
  }

  /**
   * A host-network busybox pod on this node mounting the csi.spire.io volume (or an emptyDir) at
   * /spiffe, as JSON.
   */
  podManifest(name: string, serviceAccount: string, extra: PodManifestOptions = {}): string {
    const volume = extra.emptyDir
      ? { name: "spiffe", emptyDir: {} }
      : { name: "spiffe", csi: { driver: "csi.spire.io", readOnly: true, ...(extra.volumeAttributes ? { volumeAttributes: extra.volumeAttributes } : {}) } };
    const securityContext = {
      ...(extra.fsGroup !== undefined ? { fsGroup: extra.fsGroup } : {}),
      ...(extra.runAsUser !== undefined ? { runAsUser: extra.runAsUser, runAsGroup: extra.runAsUser } : {}),
    };
    return JSON.stringify({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name, namespace: "default", labels: { test: "real-node" } },
      spec: {
        nodeName: this.nodeName,
        serviceAccountName: serviceAccount,
        hostNetwork: true,
        // busybox sh as PID 1 ignores SIGTERM.
        terminationGracePeriodSeconds: 1,
        securityContext,
        containers: [
          {
            name: "app",
            image: "localhost/busybox:1",
            imagePullPolicy: "Never",
            command: ["sh", "-c", "sleep 1000000"],
            volumeMounts: [{ name: "spiffe", mountPath: "/spiffe", readOnly: !extra.emptyDir }],
          },
        ],
        volumes: [volume],
      },
    });
  }

  /**
   * Pod start to Running with the csi.spire.io volume and with an emptyDir: `oneByOne` pods each
   * created after the previous one runs, then `atOnce` pods in one apply; all deleted after. The
   * service account must exist and have an entry.
   */
  async podStartTimes(options: { serviceAccount: string; oneByOne: number; atOnce: number }): Promise<PodStartTimes> {
    const times = {} as PodStartTimes;
    for (const kind of ["csi", "emptyDir"] as const) {
      const emptyDir = kind === "emptyDir";
      const oneByOne: number[] = [];
      for (let i = 0; i < options.oneByOne; i++) {
        const name = `start-${kind.toLowerCase()}-${i}`;
        oneByOne.push(await this.timeToRunning([this.podManifest(name, options.serviceAccount, { emptyDir })]).then((each) => each[0]!));
      }
      const atOnce = await this.timeToRunning(Array.from({ length: options.atOnce }, (_, i) => this.podManifest(`burst-${kind.toLowerCase()}-${i}`, options.serviceAccount, { emptyDir })));
      await this.kubectl(["-n", "default", "delete", "pods", "-l", "test=real-node-start", "--wait=true", "--timeout=300s"]);
      times[kind] = { oneByOne, atOnce };
    }
    return times;
  }

  /**
   * Creates the pods (JSON manifests) in one apply, labelled test=real-node-start, and returns for
   * each the milliseconds from just before the apply until a watch sees it in phase Running.
   */
  async timeToRunning(manifests: string[]): Promise<number[]> {
    const pods = manifests.map((text) => {
      const pod = JSON.parse(text) as { metadata: { name: string; labels?: Record<string, string> } };
      pod.metadata.labels = { test: "real-node-start" };
      return pod;
    });
    const pending = new Set(pods.map((pod) => pod.metadata.name));
    const times = new Map<string, number>();
    const watch = spawn(this.env.KUBECTL, ["--kubeconfig", this.env.KUBECONFIG, "-n", "default", "get", "pods", "-l", "test=real-node-start", "--watch", "--no-headers", "-o", "custom-columns=N:.metadata.name,P:.status.phase"], { stdio: ["ignore", "pipe", "inherit"] });
    let started = 0;
    const allRunning = new Promise<void>((resolve, reject) => {
      let buffered = "";
      watch.stdout.on("data", (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split("\n");
        buffered = lines.pop()!;
        for (const line of lines) {
          const [name, phase] = line.trim().split(/\s+/);
          if (started && name && phase === "Running" && pending.delete(name)) times.set(name, performance.now() - started);
        }
        if (pending.size === 0) resolve();
      });
      watch.once("exit", () => reject(new Error(`kubectl watch exited with ${pending.size} pods not seen Running`)));
    });
    try {
      // The watch lists what exists first; give it that moment before the pods are created.
      await sleep(1000);
      started = performance.now();
      await this.kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: pods }));
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`pods not Running within 300 s: ${[...pending].join(", ")}`)), 300_000);
      });
      await Promise.race([allRunning, timeout]).finally(() => clearTimeout(timer));
    } finally {
      watch.kill();
    }
    return pods.map((pod) => times.get(pod.metadata.name)!);
  }

  /** Restarts kubelet with the same command line (down.sh finds it by the pids file). */
  async restartKubelet(): Promise<void> {
    await sh("bash", [join(repoRoot, "scripts/real-node/restart-kubelet.sh"), join(this.dir, "node")], { timeoutMs: 180_000 });
  }

  /** Tears everything down: the release, the node (mounts, netns, iptables, processes), SPIRE. */
  async stop(): Promise<void> {
    if (this.env) await this.helm(["uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s"]).catch(() => undefined);
    // down.sh also removes the node's global iptables rules: only for a node up.sh began to make.
    if (existsSync(join(this.dir, "node"))) {
      await sh("bash", [join(repoRoot, "scripts/real-node/down.sh"), join(this.dir, "node")], { timeoutMs: 180_000 }).catch((error) => console.error(error));
    }
    await this.spireFixture?.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
