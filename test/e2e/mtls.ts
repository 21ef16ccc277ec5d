import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, createServer, type PeerCertificate } from "node:tls";

function uriSans(certificate: PeerCertificate): string[] {
  return (certificate.subjectaltname ?? "")
    .split(", ")
    .filter((name) => name.startsWith("URI:"))
    .map((name) => name.slice(4));
}

async function tlsFiles(dir: string) {
  const [cert, key, ca] = await Promise.all(["tls.crt", "tls.key", "ca.crt"].map((name) => readFile(join(dir, name))));
  return { cert: cert!, key: key!, ca: ca! };
}

/**
 * An mTLS handshake between two volumes using only their files, as two workloads would do it:
 * both sides verify the chain against their ca.crt and check the peer's SPIFFE ID (URI SAN).
 * Resolves with the SPIFFE IDs each side saw.
 */
export async function mtlsHandshake(
  serverDir: string,
  clientDir: string,
  expect: { serverId: string; clientId: string },
): Promise<{ serverSaw: string; clientSaw: string }> {
  const serverFiles = await tlsFiles(serverDir);
  const clientFiles = await tlsFiles(clientDir);
  let serverSaw = "";
  const server = createServer({ ...serverFiles, requestCert: true, rejectUnauthorized: true, minVersion: "TLSv1.3" }, (socket) => {
    serverSaw = uriSans(socket.getPeerCertificate()).join(",");
    socket.end(serverSaw === expect.clientId ? "ok" : "wrong peer");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  try {
    const clientSaw = await new Promise<string>((resolve, reject) => {
      const socket = connect({
        host: "127.0.0.1",
        port,
        ...clientFiles,
        minVersion: "TLSv1.3",
        // SPIFFE authenticates the SPIFFE ID, not a DNS name.
        checkServerIdentity: (_host, certificate) => {
          const ids = uriSans(certificate);
          return ids.length === 1 && ids[0] === expect.serverId ? undefined : new Error(`unexpected server SPIFFE ID ${ids.join(",")}`);
        },
      });
      let body = "";
      socket.on("data", (chunk) => (body += chunk.toString()));
      socket.on("end", () => (body === "ok" ? resolve(uriSans(socket.getPeerCertificate()).join(",")) : reject(new Error(`server said ${body}`))));
      socket.on("error", reject);
    });
    return { serverSaw, clientSaw };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
