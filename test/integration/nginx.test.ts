import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { once } from "node:events";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { pemBlocks } from "../support/identity-files.js";
import type { PublishedVolume } from "../support/kubelet-sim.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const serverPod = { uid: "4e914e00-0000-4000-8000-000000000001", name: "web-0", namespace: "shop", serviceAccount: "web" };
const clientPod = { uid: "4e914e00-0000-4000-8000-000000000002", name: "job-0", namespace: "shop", serviceAccount: "job" };
const webId = "spiffe://example.org/ns/shop/sa/web";
const readme = fileURLToPath(new URL("../../README.md", import.meta.url));

async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  server.close();
  return port;
}

/** The README's nginx reload loop, verbatim but for the volume's path. */
async function readmeWatcher(volumeDir: string): Promise<string> {
  const text = await readFile(readme, "utf8");
  const block = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1]!).find((body) => body.startsWith("# nginx: reload when"));
  assert.ok(block, "README shows the nginx reload loop");
  return block.replaceAll("/spiffe/", `${volumeDir}/`);
}

const serialOf = (pem: string) => new X509Certificate(pemBlocks(pem)[0]!.der).serialNumber.replace(/^0+/, "").toUpperCase();

/** One HTTPS request; resolves with the server's leaf serial and the body (the client serial nginx saw). */
function call(port: number, client: { cert: string; key: string; ca: string } | undefined, ca: string): Promise<{ status: number; serverSerial: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path: "/",
        ca,
        ...client,
        minVersion: "TLSv1.3",
        agent: false,
        // SPIFFE certificates carry the identity in a URI SAN, not a host name.
        checkServerIdentity: (_host, cert) => (cert.subjectaltname?.split(", ").includes(`URI:${webId}`) ? undefined : new Error(`server is ${cert.subjectaltname}`)),
      },
      (res) => {
        const serverSerial = (res.socket as import("node:tls").TLSSocket).getPeerCertificate().serialNumber.replace(/^0+/, "").toUpperCase();
        let body = "";
        res.on("data", (chunk: Buffer) => (body += chunk.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, serverSerial, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("nginx (Debian package) serves mTLS from a volume and follows rotation through the README's ..data watcher", () => {
  let fx: DriverFixture;
  let dir: string;
  let server: PublishedVolume;
  let client: PublishedVolume;
  let nginx: ChildProcess | undefined;
  let port: number;

  before(async () => {
    fx = await startDriverFixture({ withIntermediate: true, driver: { volumeBacking: "tmpfs" } });
    for (const [id, sa] of [["web", "web"], ["job", "job"]] as const) {
      await fx.agent.addEntry({ id, spiffeId: `spiffe://example.org/ns/shop/sa/${sa}`, selectors: [{ type: "k8s", value: "ns:shop" }, { type: "k8s", value: `sa:${sa}` }] });
    }
    server = await fx.kubelet.publish(serverPod, "tls");
    client = await fx.kubelet.publish(clientPod, "tls");
    dir = await mkdtemp(join(tmpdir(), "nginx-"));
    port = await freePort();
    const conf = join(dir, "nginx.conf");
    await writeFile(
      conf,
      `pid ${dir}/nginx.pid;
worker_processes 1;
events {}
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate ${server.targetPath}/tls.crt;
    ssl_certificate_key ${server.targetPath}/tls.key;
    ssl_client_certificate ${server.targetPath}/ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 2;
    location / { return 200 "$ssl_client_serial"; }
  }
}
`,
    );
    // The README's loop calls plain `nginx`; this one points it at the test's config.
    await writeFile(join(dir, "nginx"), `#!/bin/sh\nexec /usr/sbin/nginx -c ${conf} -e ${dir}/error.log "$@"\n`);
    await chmod(join(dir, "nginx"), 0o755);
    nginx = spawn("sh", ["-c", await readmeWatcher(server.targetPath)], { detached: true, stdio: "ignore", env: { ...process.env, PATH: `${dir}:${process.env.PATH}` } });
  });

  after(async () => {
    // The loop and its nginx share one process group.
    if (nginx?.pid) {
      try {
        process.kill(-nginx.pid, "SIGTERM");
      } catch {
        // Already gone.
      }
    }
    await fx?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("a client with another volume's files gets through, one without a certificate does not; a rotation is served after the watcher's reload", async () => {
    const files = async (volume: PublishedVolume) => ({
      cert: await readFile(join(volume.targetPath, "tls.crt"), "utf8"),
      key: await readFile(join(volume.targetPath, "tls.key"), "utf8"),
      ca: await readFile(join(volume.targetPath, "ca.crt"), "utf8"),
    });
    const clientFiles = await files(client);
    let first: Awaited<ReturnType<typeof call>> | undefined;
    for (let attempt = 0; !first && attempt < 100; attempt++) {
      first = await call(port, clientFiles, clientFiles.ca).catch(() => sleep(100).then(() => undefined));
    }
    assert.ok(first, "nginx answered");
    assert.equal(first.status, 200);
    assert.equal(first.body.replace(/^0+/, ""), serialOf(clientFiles.cert), "nginx verified the client's certificate from the other volume");
    assert.equal(first.serverSerial, serialOf((await files(server)).cert));
    const anonymous = await call(port, undefined, clientFiles.ca);
    assert.equal(anonymous.status, 400, "ssl_verify_client on: no certificate, no service");

    const mark = fx.driver.logs.length;
    await fx.agent.rotate("web");
    await fx.driver.waitForLog((line) => line.volumeId === server.volumeId && line.msg === "identity files rotated", 10_000, mark);
    const rotatedSerial = serialOf((await files(server)).cert);
    assert.notEqual(rotatedSerial, first.serverSerial);
    // The loop polls every 10 s; wait for nginx to serve the new certificate, then check it.
    let served = first.serverSerial;
    for (let attempt = 0; served !== rotatedSerial && attempt < 60; attempt++) {
      await sleep(500);
      served = (await call(port, clientFiles, clientFiles.ca)).serverSerial;
    }
    assert.equal(served, rotatedSerial, "nginx reloaded and serves the rotated certificate");
    assert.match(await readFile(join(dir, "error.log"), "utf8"), /signal process started|reconfiguring/, "it was a reload, not a restart");
  });
});
