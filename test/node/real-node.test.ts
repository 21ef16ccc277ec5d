/**
 * The driver as users run it: the image built from the Dockerfile, installed by the chart with
 * helm, on a real kubelet v1.34.4 + containerd, against a real SPIRE v1.15.3 agent. Needs root and
 * Linux (cgroup v1 or v2); `npm run test:node`. Workload pods are host-network busybox pods; the
 * driver's own pod is the chart's DaemonSet pod on the node's bridge network.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { checkEnvoySds } from "../support/envoy-sds-checker.js";
import { checkIdentity, pemBlocks } from "../support/identity-files.js";
import { JavaClient, opensslPkcs12Info, opensslVerify } from "../support/real-clients.js";
import { chartPath, namespace, RealNode, release, waitFor, type PodManifestOptions } from "./support/real-node.js";

const td = "example.org";

function p50(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return Math.round(sorted[Math.floor((sorted.length - 1) / 2)]!);
}
const ttlSeconds = 30;

interface PodStatus {
  metadata: { uid: string };
  status: { phase: string; containerStatuses?: { restartCount: number; ready: boolean }[] };
}

describe("real node: image, chart, kubelet, SPIRE", { timeout: 60 * 60_000 }, () => {
  let node: RealNode;

  before(async () => {
    node = await RealNode.start();
  });
  after(async () => {
    await node?.stop();
  });

  function podManifest(name: string, serviceAccount: string, extra: PodManifestOptions = {}): string {
    return node.podManifest(name, serviceAccount, extra);
  }

  async function serviceAccount(name: string): Promise<void> {
    await node.kubectl(["-n", "default", "create", "serviceaccount", name]).catch((error: Error) => {
      if (!/already exists/.test(error.message)) throw error;
    });
  }

  async function entryFor(sa: string, ttl = ttlSeconds): Promise<string> {
    return node.spire.createEntry({ spiffeId: `spiffe://${td}/ns/default/sa/${sa}`, selectors: ["k8s:ns:default", `k8s:sa:${sa}`], x509SvidTtl: ttl });
  }

  async function createPod(name: string, sa: string, extra: Parameters<typeof podManifest>[2] = {}): Promise<void> {
    await node.kubectl(["apply", "-f", "-"], podManifest(name, sa, extra));
  }

  async function waitRunning(name: string, timeoutMs = 90_000): Promise<PodStatus> {
    return waitFor(`pod ${name} Running`, timeoutMs, async () => {
      const pod = await node.json<PodStatus>(["-n", "default", "get", "pod", name]);
      return pod.status.phase === "Running" && pod.status.containerStatuses?.[0]?.ready ? pod : undefined;
    });
  }

  async function deletePod(name: string): Promise<void> {
    await node.kubectl(["-n", "default", "delete", "pod", name, "--wait=true", "--timeout=120s"]);
  }

  /** Reads the default layout's files inside the container and checks them as a TLS peer would. */
  async function identityInside(pod: string, files = { cert: "tls.crt", key: "tls.key", bundle: "ca.crt" }) {
    const [cert, key, bundle] = await Promise.all([files.cert, files.key, files.bundle].map((file) => node.exec(pod, ["cat", `/spiffe/${file}`])));
    return checkIdentity(cert!, key!, bundle!);
  }

  /** The names the pod sees in /spiffe (the `..data` / `..snap-*` machinery left out), sorted. */
  async function visibleInside(pod: string): Promise<string[]> {
    return (await node.exec(pod, ["ls", "-A", "/spiffe"])).split("\n").filter((name) => name !== "" && !name.startsWith("..")).sort();
  }

  /** "<uid> <gid> <octal mode>" of each file in /spiffe, as the container sees it. */
  async function ownershipInside(pod: string, files: string[]): Promise<Record<string, string>> {
    const lines = (await node.exec(pod, ["stat", "-L", "-c", "%n %u %g %a", ...files.map((file) => `/spiffe/${file}`)])).trim().split("\n");
    return Object.fromEntries(lines.map((line) => [line.split(" ")[0]!.slice("/spiffe/".length), line.split(" ").slice(1).join(" ")]));
  }

  /** Copies files out of the pod's /spiffe into a temp dir for the host's clients; removes the dir after `use`. */
  async function withCopies<T>(pod: string, files: string[], use: (dir: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), "real-node-copies-"));
    try {
      for (const file of files) await node.copyOut(pod, `/spiffe/${file}`, join(dir, file));
      return await use(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Starts the pod of examples/<file> as a busybox pod with that example's volume attributes, user and fsGroup. */
  async function startExample(file: string, entry: boolean): Promise<{ name: string; attributes: Record<string, string> }> {
    const example = await node.examplePod(file);
    const sa = example.serviceAccount ?? example.name;
    await serviceAccount(sa);
    if (entry) await entryFor(sa);
    await createPod(example.name, sa, example.options);
    await waitRunning(example.name);
    return { name: example.name, attributes: example.options.volumeAttributes };
  }

  /** The CSI tmpfs mounts of a pod in the host's mount table. */
  async function hostMountsOf(uid: string): Promise<string[]> {
    const mountinfo = await import("node:fs/promises").then((fs) => fs.readFile("/proc/self/mountinfo", "utf8"));
    return mountinfo.split("\n").filter((line) => line.includes(`/pods/${uid}/volumes/kubernetes.io~csi/`) && line.includes(" - tmpfs "));
  }

  async function records(): Promise<string[]> {
    return (await readdir(node.metadataDir).catch(() => [] as string[])).filter((name) => name.endsWith(".json"));
  }

  async function driverPod(): Promise<{ name: string; uid: string; restarts: number; ready: boolean }> {
    const list = await node.json<{ items: (PodStatus & { metadata: { name: string; uid: string; deletionTimestamp?: string } })[] }>(["-n", namespace, "get", "pods", "-l", `app.kubernetes.io/instance=${release}`]);
    const live = list.items.filter((pod) => !pod.metadata.deletionTimestamp);
    assert.equal(live.length, 1, `one driver pod, got ${live.length}`);
    const pod = live[0]!;
    return { name: pod.metadata.name, uid: pod.metadata.uid, restarts: pod.status.containerStatuses?.[0]?.restartCount ?? 0, ready: pod.status.containerStatuses?.[0]?.ready ?? false };
  }

  async function waitDriverReady(): Promise<void> {
    await waitFor("driver pod Ready", 180_000, async () => ((await driverPod()).ready ? true : undefined));
  }

  async function waitNewSerial(pod: string, previous: string, timeoutMs = 3 * ttlSeconds * 1000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // Every read inside the container must give a consistent identity, rotation or not.
      const identity = await identityInside(pod);
      if (identity.serialNumber !== previous) return identity.serialNumber;
      if (Date.now() > deadline) throw new Error(`no rotation seen in ${pod} within ${timeoutMs} ms (serial still ${previous})`);
      await sleep(1000);
    }
  }

  test("the chart's DaemonSet runs the image built from the Dockerfile as one container, registered with kubelet", async () => {
    const ds = await node.json<{ spec: { template: { spec: { containers: { name: string; image: string }[] } } } }>(["-n", namespace, "get", "daemonset", release]);
    assert.deepEqual(ds.spec.template.spec.containers.map((c) => c.image), [`ghcr.io/spire-csi-driver/spire-csi-driver:${RealNode.tags[0]}`]);
    // The final stage re-declares ARG NODE_IMAGE: the label names the base actually used.
    assert.equal(await node.imageLabel(RealNode.tags[0], "org.opencontainers.image.base.name"), "docker.io/library/node:24-bookworm-slim");
    await waitDriverReady();
    const csiNode = await node.json<{ spec: { drivers: { name: string; nodeID: string }[] | null } }>(["get", "csinode", node.nodeName]);
    assert.deepEqual(csiNode.spec.drivers?.map((d) => [d.name, d.nodeID]), [["csi.spire.io", node.nodeName]]);
    const sockets = await readdir(`${node.kubeletRoot}/plugins_registry`);
    assert.ok(sockets.some((name) => name.startsWith("csi.spire.io")), `registration socket in plugins_registry: ${sockets.join(", ")}`);
  });

  test("a pod with the default volume: inside the container the SPIFFE ID is the entry's, the key matches, the chain verifies", async () => {
    await serviceAccount("web");
    await entryFor("web");
    await createPod("web", "web");
    const pod = await waitRunning("web");
    const identity = await identityInside("web");
    assert.equal(identity.spiffeId, `spiffe://${td}/ns/default/sa/web`);
    assert.equal((await hostMountsOf(pod.metadata.uid)).length, 1, "the volume's tmpfs is in the host's mount table");
  });

  test("rotation is seen inside the running container", async () => {
    const first = (await identityInside("web")).serialNumber;
    const second = await waitNewSerial("web", first);
    assert.notEqual(second, first);
  });

  test("two service accounts get two identities; a pod without an entry waits with the driver's message, then starts once its entry exists", async () => {
    await serviceAccount("db");
    await serviceAccount("lonely");
    await entryFor("db");
    await createPod("db", "db");
    await createPod("lonely", "lonely");
    await waitRunning("db");
    assert.equal((await identityInside("db")).spiffeId, `spiffe://${td}/ns/default/sa/db`);
    assert.notEqual((await identityInside("db")).spiffeId, (await identityInside("web")).spiffeId);
    const message = await waitFor("FailedMount event on lonely", 150_000, async () => {
      const events = await node.json<{ items: { reason: string; message: string }[] }>(["-n", "default", "get", "events", "--field-selector", "involvedObject.name=lonely"]);
      return events.items.find((event) => event.reason === "FailedMount" && /no identity within/.test(event.message))?.message;
    });
    assert.match(message, /k8s:sa:lonely/);
    const lonely = await node.json<PodStatus>(["-n", "default", "get", "pod", "lonely"]);
    assert.equal(lonely.status.phase, "Pending");
    await entryFor("lonely");
    await waitRunning("lonely", 180_000);
    assert.equal((await identityInside("lonely")).spiffeId, `spiffe://${td}/ns/default/sa/lonely`);
    await deletePod("db");
    await deletePod("lonely");
  });

  test("pod delete: NodeUnpublishVolume removes the tmpfs from the host and the record", async () => {
    await createPod("short", "web");
    const pod = await waitRunning("short");
    assert.equal((await hostMountsOf(pod.metadata.uid)).length, 1);
    const before = (await records()).length;
    await deletePod("short");
    assert.deepEqual(await hostMountsOf(pod.metadata.uid), []);
    assert.equal((await records()).length, before - 1);
  });

  test("driver pod deleted and recreated while workloads run: files keep rotating; a pod deleted meanwhile is cleaned up once the driver is back", async () => {
    await createPod("orphan", "web");
    const orphan = await waitRunning("orphan");
    const old = await driverPod();
    await node.kubectl(["-n", namespace, "delete", "pod", old.name, "--wait=true", "--timeout=120s"]);
    // While no driver runs: the workload still reads its files; the orphan's delete must wait.
    await node.kubectl(["-n", "default", "delete", "pod", "orphan", "--wait=false"]);
    const during = await identityInside("web");
    await waitDriverReady();
    assert.notEqual((await driverPod()).uid, old.uid);
    await waitNewSerial("web", during.serialNumber);
    await waitFor("orphan pod gone", 180_000, async () => {
      const left = await node.kubectl(["-n", "default", "get", "pods", "--field-selector", "metadata.name=orphan", "-o", "name"]);
      return left.trim() === "" ? true : undefined;
    });
    assert.deepEqual(await hostMountsOf(orphan.metadata.uid), []);
  });

  test("helm upgrade to a new image tag with pods running: nothing unmounted, rotation continues", async () => {
    const web = await node.json<PodStatus>(["-n", "default", "get", "pod", "web"]);
    const mountsBefore = await hostMountsOf(web.metadata.uid);
    const serial = (await identityInside("web")).serialNumber;
    await node.helm(["upgrade", release, chartPath, "--namespace", namespace, ...node.values(RealNode.tags[1]), "--wait", "--timeout", "180s"]);
    await waitFor("driver pod on the new tag", 180_000, async () => {
      const pods = await node.json<{ items: { spec: { containers: { image: string }[] }; status: { containerStatuses?: { ready: boolean }[] } }[] }>(["-n", namespace, "get", "pods", "-l", `app.kubernetes.io/instance=${release}`]);
      return pods.items.length === 1 && pods.items[0]!.spec.containers[0]!.image.endsWith(`:${RealNode.tags[1]}`) && pods.items[0]!.status.containerStatuses?.[0]?.ready ? true : undefined;
    });
    assert.deepEqual(await hostMountsOf(web.metadata.uid), mountsBefore);
    await waitNewSerial("web", serial);
  });

  test("kubelet restart with pods running: the volume stays, rotation continues", async () => {
    const web = await node.json<PodStatus>(["-n", "default", "get", "pod", "web"]);
    const serial = (await identityInside("web")).serialNumber;
    await node.restartKubelet();
    // The API still says Running from before the restart; exec works once kubelet has the pod again.
    await waitFor("kubelet serves exec in web again", 120_000, async () => ((await node.exec("web", ["true"])) === "" ? true : undefined));
    await waitRunning("web");
    assert.equal((await hostMountsOf(web.metadata.uid)).length, 1);
    await waitNewSerial("web", serial);
    // A new pod after the restart is served too.
    await createPod("after-restart", "web");
    await waitRunning("after-restart");
    assert.equal((await identityInside("after-restart")).spiffeId, `spiffe://${td}/ns/default/sa/web`);
    await deletePod("after-restart");
  });

  test("SPIRE agent down for over 2 minutes: readiness reports it, liveness does not restart the driver, files come back to rotating", async () => {
    const before = await driverPod();
    await node.spire.stopAgent("SIGTERM");
    const outageStarted = Date.now();
    await waitFor("driver pod not Ready during the outage", 120_000, async () => ((await driverPod()).ready ? undefined : true));
    while (Date.now() - outageStarted < 130_000) await sleep(5000);
    const during = await driverPod();
    assert.equal(during.restarts, before.restarts, "liveness probe restarted the driver during the agent outage");
    assert.equal(during.uid, before.uid);
    const serial = (await identityInside("web")).serialNumber;
    await node.spire.startAgent();
    await waitDriverReady();
    await waitNewSerial("web", serial);
    assert.equal((await driverPod()).restarts, before.restarts);
  });

  test("every layout once, fsGroup from the pod's securityContext (files group-owned, readable by a non-root user), a JWT audience", async () => {
    await createPod("helper", "web", { volumeAttributes: { "csi.spire.io/layout": "spiffe-helper" } });
    await createPod("fs", "web", { volumeAttributes: { "csi.spire.io/layout": "spiffe-fs", "csi.spire.io/jwt-audiences": "vault" } });
    await createPod("grouped", "web", { fsGroup: 2000, runAsUser: 1000 });
    await Promise.all(["helper", "fs", "grouped"].map((name) => waitRunning(name)));
    const webId = `spiffe://${td}/ns/default/sa/web`;
    assert.equal((await identityInside("helper", { cert: "svid.pem", key: "svid_key.pem", bundle: "svid_bundle.pem" })).spiffeId, webId);

    const credential = await node.exec("fs", ["cat", "/spiffe/credential-bundle.pem"]);
    const blocks = credential.match(/-----BEGIN ([A-Z ]+)-----\n[\s\S]+?-----END \1-----\n/g) ?? [];
    assert.match(blocks[0] ?? "", /^-----BEGIN PRIVATE KEY-----/, "spiffe-fs: the key block comes first");
    const trustBundle = await node.exec("fs", ["cat", `/spiffe/${td}.trust-bundle.pem`]);
    assert.equal(checkIdentity(blocks.slice(1).join(""), blocks[0]!, trustBundle).spiffeId, webId);
    const token = (await node.exec("fs", ["cat", "/spiffe/jwt-vault.token"])).trim();
    const claims = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { sub: string; aud: string | string[] };
    assert.equal(claims.sub, webId);
    assert.deepEqual([claims.aud].flat(), ["vault"]);

    // The container runs as uid 1000 (not root, not in group 0): reading works only through the fsGroup.
    assert.equal((await node.exec("grouped", ["id", "-u"])).trim(), "1000");
    assert.equal((await node.exec("grouped", ["stat", "-L", "-c", "%g %a", "/spiffe/tls.key"])).trim(), "2000 640");
    assert.equal((await identityInside("grouped")).spiffeId, webId);
    for (const name of ["helper", "fs", "grouped"]) await deletePod(name);
  });

  test("examples/bundle-only.yaml's volume: only the own bundle, world-readable, no SVID; it verifies another pod's chain", async () => {
    // No entry for its ServiceAccount: a bundle-only volume does not wait for an SVID.
    const { name } = await startExample("bundle-only.yaml", false);
    assert.deepEqual(await visibleInside(name), ["ca.crt"]);
    assert.deepEqual(await ownershipInside(name, ["ca.crt"]), { "ca.crt": "0 0 644" });
    const webChain = await node.exec("web", ["cat", "/spiffe/tls.crt"]);
    await withCopies(name, ["ca.crt"], async (dir) => {
      const blocks = pemBlocks(await readFile(join(dir, "ca.crt"), "utf8"));
      assert.ok(blocks.length > 0 && blocks.every((block) => block.label === "CERTIFICATE"), `ca.crt holds certificates only: ${blocks.map((block) => block.label).join(", ")}`);
      assert.match(await opensslVerify(webChain, join(dir, "ca.crt")), /: OK$/m);
    });
    await deletePod(name);
  });

  test("examples/java-keystore.yaml's volume: keystore.p12 and truststore.p12 beside the PEM files, group-readable; keytool and openssl read them with the example's password", async () => {
    const { name, attributes } = await startExample("java-keystore.yaml", true);
    const password = attributes["csi.spire.io/keystore-password"] ?? "changeit";
    const files = ["ca.crt", "keystore.p12", "tls.crt", "tls.key", "truststore.p12"];
    assert.deepEqual(await visibleInside(name), files);
    assert.deepEqual(await ownershipInside(name, files), Object.fromEntries(files.map((file) => [file, "0 1000 640"])));
    assert.equal((await node.exec(name, ["id", "-u"])).trim(), "1000", "read through the fsGroup, not as root");
    assert.equal((await identityInside(name)).spiffeId, `spiffe://${td}/ns/default/sa/orders`);
    await withCopies(name, files, async (dir) => {
      assert.deepEqual(await JavaClient.keytoolList(join(dir, "keystore.p12"), password), [{ alias: "spiffe", type: "PrivateKeyEntry" }]);
      const ownRoots = pemBlocks(await readFile(join(dir, "ca.crt"), "utf8")).length;
      assert.deepEqual(
        (await JavaClient.keytoolList(join(dir, "truststore.p12"), password)).sort((a, b) => a.alias.localeCompare(b.alias)),
        Array.from({ length: ownRoots }, (_, i) => ({ alias: `${td}-${i}`, type: "trustedCertEntry" })),
      );
      assert.match(await opensslPkcs12Info(join(dir, "keystore.p12"), password), /Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC/);
      assert.match(await opensslPkcs12Info(join(dir, "truststore.p12"), password), /Certificate bag/);
      assert.match(await opensslVerify(await readFile(join(dir, "tls.crt"), "utf8"), join(dir, "ca.crt")), /: OK$/m);
    });
    await deletePod(name);
  });

  test("examples/envoy-sds.yaml's volume: envoy-sds.json with the example's secret names passes Envoy's API with the SPIFFE validator for the trust domain", async () => {
    const { name, attributes } = await startExample("envoy-sds.yaml", true);
    const sdsFile = attributes["csi.spire.io/envoy-sds-file"] ?? "envoy-sds.json";
    const files = ["ca.crt", sdsFile, "tls.crt", "tls.key"].sort();
    assert.deepEqual(await visibleInside(name), files);
    // No fsGroup in the example: root-owned 0644 in a volume only this pod sees.
    assert.deepEqual(await ownershipInside(name, files), Object.fromEntries(files.map((file) => [file, "0 0 644"])));
    await withCopies(name, [sdsFile, "ca.crt"], async (dir) => {
      const text = await readFile(join(dir, sdsFile), "utf8");
      assert.doesNotThrow(() => JSON.parse(text));
      const sds = await checkEnvoySds(join(dir, sdsFile), attributes["csi.spire.io/envoy-cert-secret"]!, attributes["csi.spire.io/envoy-ca-secret"]!);
      assert.deepEqual(
        { validator: sds.validator, trustDomains: sds.trustDomains, leafUris: sds.leafUris, keyMatchesLeaf: sds.keyMatchesLeaf },
        { validator: "spiffe", trustDomains: { [td]: pemBlocks(await readFile(join(dir, "ca.crt"), "utf8")).length }, leafUris: [`spiffe://${td}/ns/default/sa/edge`], keyMatchesLeaf: true },
      );
    });
    await deletePod(name);
  });

  test("pod start to Running, csi.spire.io volume vs emptyDir (printed figures, p50)", async () => {
    const figures: Record<string, number> = {};
    const times = await node.podStartTimes({ serviceAccount: "web", oneByOne: 20, atOnce: 30 });
    for (const kind of ["csi", "emptyDir"] as const) {
      figures[`${kind} one at a time (20), p50 ms`] = p50(times[kind].oneByOne);
      figures[`${kind} 30 at once, p50 ms`] = p50(times[kind].atOnce);
    }
    console.log(`pod start to Running on the real node:\n${Object.entries(figures).map(([key, value]) => `  ${key}: ${value}`).join("\n")}`);
    assert.equal(Object.keys(figures).length, 4);
  });

  test("helm uninstall leaves no mounts, no registration socket, no records", async () => {
    await deletePod("web");
    await node.helm(["uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s"]);
    await waitFor("driver pod gone", 120_000, async () => {
      const left = await node.kubectl(["-n", namespace, "get", "pods", "-o", "name"]);
      return left.trim() === "" ? true : undefined;
    });
    const mountinfo = await import("node:fs/promises").then((fs) => fs.readFile("/proc/self/mountinfo", "utf8"));
    assert.deepEqual(mountinfo.split("\n").filter((line) => line.includes(`${node.kubeletRoot}/pods/`) && line.includes("kubernetes.io~csi")), []);
    assert.deepEqual(await records(), []);
    assert.deepEqual((await readdir(`${node.kubeletRoot}/plugins_registry`)).filter((name) => name.startsWith("csi.spire.io")), []);
  });
});
