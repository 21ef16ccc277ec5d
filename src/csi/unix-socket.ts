import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import { connect } from "node:net";
import { dirname } from "node:path";
import { ServerCredentials, type Server } from "@grpc/grpc-js";
import { DriverError } from "../errors.js";

/**
 * Which file a server bound: a path that now names another file is no longer ours. The birth time
 * tells a recreated socket from ours even when the file system hands out the same inode again.
 */
export interface BoundSocket {
  path: string;
  identity: string;
}

async function fileIdentity(path: string): Promise<string> {
  const stats = await lstat(path, { bigint: true });
  return `${stats.dev}:${stats.ino}:${stats.birthtimeNs}`;
}

/**
 * Binds a gRPC server to a unix socket only root may connect to (kubelet runs as root). Note that
 * closing a server later unlinks whatever file is at `path` then (libuv does so on close).
 */
export async function bindUnixSocket(server: Server, path: string): Promise<BoundSocket> {
  await claimSocketPath(path);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${path}`, ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve())),
  );
  await chmod(path, 0o600);
  return { path, identity: await fileIdentity(path) };
}

/** Whether the file at the bound path is still the socket the server listens on. */
export async function stillBound(bound: BoundSocket): Promise<boolean> {
  try {
    return (await fileIdentity(bound.path)) === bound.identity;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

/**
 * Makes `path` free for a new unix socket server. A socket file left by a killed process is
 * removed, but only once a connect to it is refused: a socket a live server answers on (another
 * driver, or a sidecar) is never unlinked, because removing it would cut kubelet off from that
 * server while it keeps running. Anything that is not a socket is left alone too.
 */
export async function claimSocketPath(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  let stats;
  try {
    stats = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  if (!stats.isSocket()) {
    throw new DriverError("failed-precondition", `${path} exists and is not a socket; remove it or choose another socket path`);
  }
  const answer = await probeSocket(path);
  if (answer === "live") {
    throw new DriverError(
      "failed-precondition",
      `a live server answers on ${path} (another spire-csi-driver or a sidecar); stop it first, the driver does not take over its socket`,
    );
  }
  if (answer === "stale") await unlink(path).catch((error: NodeJS.ErrnoException) => (error.code === "ENOENT" ? undefined : Promise.reject(error)));
}

/** "live" if a server accepts a connection, "stale" if the kernel refuses it (nobody listens), "gone" if the file vanished. */
export function probeSocket(path: string): Promise<"live" | "stale" | "gone"> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve("live");
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ECONNREFUSED") resolve("stale");
      else if (error.code === "ENOENT") resolve("gone");
      // A full accept backlog: someone listens there.
      else if (error.code === "EAGAIN") resolve("live");
      else reject(error);
    });
  });
}
