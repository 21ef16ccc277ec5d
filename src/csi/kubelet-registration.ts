import { basename, dirname } from "node:path";
import { Server } from "@grpc/grpc-js";
import { watch, type FSWatcher } from "chokidar";
import type { Logger } from "pino";
import { Registration } from "../gen/kubelet/pluginregistration/v1/api_pb.js";
import { toGrpcService } from "./grpc-service.js";
import { pluginName } from "./identity-service.js";
import { bindUnixSocket, probeSocket, stillBound, type BoundSocket } from "./unix-socket.js";

/** How often the registration socket is checked even when no watch event arrived (e.g. its dir was removed). */
const checkIntervalMs = 10_000;

export interface RegistrationStatus {
  registered: boolean;
  error: string;
  at: Date;
}

/**
 * Registers the driver with kubelet the way node-driver-registrar would, without the sidecar:
 * serves kubelet's pluginregistration.Registration v1 on a socket in <kubelet-root>/plugins_registry/.
 * kubelet's plugin watcher dials every socket that appears there, asks GetInfo, registers the CSI
 * endpoint it names (then calls NodeGetInfo on it) and reports back with NotifyRegistrationStatus.
 *
 * Re-registration: a restarted driver binds a new socket, which the watcher sees as a new plugin;
 * a restarted kubelet re-scans the dir and finds this socket still served. If the socket file is
 * removed under the running driver (a cleanup script, `rm -rf plugins_registry/*`), kubelet would
 * never find the driver again, so it is recreated.
 */
export class KubeletRegistration {
  private server: Server | undefined;
  private bound: BoundSocket | undefined;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> = Promise.resolve();
  private stopped = false;
  /** kubelet's last NotifyRegistrationStatus, if it has called yet. */
  status: RegistrationStatus | undefined;

  constructor(
    private readonly options: {
      /** Where kubelet looks: <kubelet-root>/plugins_registry/csi.spire.io-reg.sock. */
      socketPath: string;
      /** The CSI socket as kubelet on the host dials it (differs from ours inside a container). */
      endpoint: string;
      logger: Logger;
    },
  ) {}

  async start(): Promise<void> {
    await this.serve();
    this.watcher = watch(dirname(this.options.socketPath), { depth: 0, ignoreInitial: true, ignorePermissionErrors: true });
    this.watcher.on("unlink", (path) => {
      if (basename(path) === basename(this.options.socketPath)) this.scheduleCheck();
    });
    this.watcher.on("error", (error) => this.options.logger.warn({ err: error }, "watching the plugin registration dir failed"));
    await new Promise<void>((resolve) => this.watcher?.once("ready", () => resolve()));
    this.timer = setInterval(() => this.scheduleCheck(), checkIntervalMs);
    this.timer.unref();
  }

  /** Stops serving; the socket file goes away, so kubelet deregisters the plugin until the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.watcher?.close();
    await this.checking;
    this.closeServer();
  }

  private scheduleCheck(): void {
    this.checking = this.checking.then(() => this.check()).catch((error: unknown) => {
      this.options.logger.warn({ err: error, socket: this.options.socketPath }, "recreating the plugin registration socket failed; retrying");
    });
  }

  private async check(): Promise<void> {
    if (this.stopped || (this.bound && (await stillBound(this.bound)))) return;
    // Closing our server unlinks whatever is at the path now: never do that to a live server.
    if ((await probeSocket(this.options.socketPath)) === "live") {
      this.options.logger.error({ socket: this.options.socketPath }, "another server answers on the plugin registration socket; leaving it alone");
      return;
    }
    this.options.logger.warn({ socket: this.options.socketPath }, "plugin registration socket was removed; recreating it so kubelet finds the driver");
    this.closeServer();
    await this.serve();
  }

  private async serve(): Promise<void> {
    const logger = this.options.logger;
    const server = new Server();
    const service = toGrpcService(
      Registration,
      {
        getInfo: async () => {
          logger.debug("kubelet asked for the plugin info");
          return { type: "CSIPlugin", name: pluginName, endpoint: this.options.endpoint, supportedVersions: ["1.0.0"] };
        },
        notifyRegistrationStatus: async (request) => {
          this.status = { registered: request.pluginRegistered, error: request.error, at: new Date() };
          if (request.pluginRegistered) logger.info({ endpoint: this.options.endpoint }, "kubelet registered the driver");
          else logger.error({ reason: request.error }, "kubelet refused to register the driver");
          return {};
        },
      },
      logger,
    );
    server.addService(service.definition, service.handlers);
    this.server = server;
    this.bound = await bindUnixSocket(server, this.options.socketPath);
    logger.info({ socket: this.options.socketPath, endpoint: this.options.endpoint }, "plugin registration socket listening");
  }

  private closeServer(): void {
    this.server?.forceShutdown();
    this.server = undefined;
    this.bound = undefined;
  }
}
