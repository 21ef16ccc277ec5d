import { hostname } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { z } from "zod";
import { durationSchema } from "./duration.js";
import { isTrustDomainName } from "./trust-domain.js";
import { seLinuxContextSchema } from "./selinux-context.js";

/**
 * Normalised (`/var/lib/kubelet/` and `/var/lib//kubelet` become `/var/lib/kubelet`), so every
 * path built from a flag compares equal to what kubelet sends.
 */
const absolutePath = z
  .string()
  .refine(isAbsolute, "must be an absolute path")
  .transform((path) => resolve(path));
const hostPort = z.string().regex(/^$|^[^\s]*:[0-9]{1,5}$/, "must be host:port (e.g. 0.0.0.0:9809) or empty");

/**
 * Every option of the driver, with its flag, environment variable and default. The flag wins over
 * the environment, the environment over the default. This table is also the `--help` text.
 */
export const options = {
  "plugin-socket": {
    env: "SPIRE_CSI_PLUGIN_SOCKET",
    default: "/csi/csi.sock",
    help: "unix socket the CSI gRPC server listens on (kubelet connects here)",
    schema: absolutePath,
  },
  "plugin-socket-host-path": {
    env: "SPIRE_CSI_PLUGIN_SOCKET_HOST_PATH",
    default: undefined,
    help: "the CSI socket's path as kubelet on the host sees it, sent to kubelet at registration; defaults to --plugin-socket (right when the driver runs on the host)",
    schema: absolutePath,
  },
  "registration-socket": {
    env: "SPIRE_CSI_REGISTRATION_SOCKET",
    default: undefined,
    help: "unix socket serving kubelet's plugin registration (kubelet's plugin watcher finds it); defaults to <kubelet-root>/plugins_registry/csi.spire.io-reg.sock; empty disables self-registration (e.g. with node-driver-registrar)",
    schema: z
      .string()
      .refine((path) => path === "" || isAbsolute(path), "must be an absolute path, or empty to disable self-registration")
      .transform((path) => (path === "" ? "" : resolve(path))),
  },
  "node-id": {
    env: "SPIRE_CSI_NODE_ID",
    default: undefined,
    help: "node id returned by NodeGetInfo; falls back to $NODE_NAME, then the host name",
    schema: z.string().min(1).max(128),
  },
  "agent-socket": {
    env: "SPIRE_CSI_AGENT_SOCKET",
    default: "/run/spire/admin/admin.sock",
    help: "SPIRE agent admin socket serving the Delegated Identity API (admin_socket_path)",
    schema: absolutePath,
  },
  "trust-domain": {
    env: "SPIRE_CSI_TRUST_DOMAIN",
    default: undefined,
    help: "the SPIRE agent's trust domain (e.g. example.org): the own bundle of csi.spire.io/bundle-only volumes; unset, those are refused",
    schema: z.string().refine(isTrustDomainName, "must be a trust domain name like example.org (lowercase, no spiffe://)").optional(),
  },
  "kubelet-root": {
    env: "SPIRE_CSI_KUBELET_ROOT",
    default: "/var/lib/kubelet",
    help: "kubelet root dir; publish only accepts targets under <root>/pods/<uid>/volumes/kubernetes.io~csi/",
    schema: absolutePath,
  },
  "metadata-dir": {
    env: "SPIRE_CSI_METADATA_DIR",
    default: "/var/lib/spire-csi-driver/volumes",
    help: "host dir holding one record per published volume, read at start-up to re-adopt volumes",
    schema: absolutePath,
  },
  "publish-timeout": {
    env: "SPIRE_CSI_PUBLISH_TIMEOUT",
    default: "30s",
    help: "deadline of NodePublishVolume: the first SVID, the tmpfs mount and the record write (kubelet's own limit is 2m)",
    schema: durationSchema.pipe(z.number().min(100).max(110_000)),
  },
  "volume-backing": {
    env: "SPIRE_CSI_VOLUME_BACKING",
    default: "tmpfs",
    help: "tmpfs: each target is a size-limited tmpfs so keys never touch disk; directory: plain dir (development)",
    schema: z.enum(["tmpfs", "directory"]),
  },
  "tmpfs-size": {
    env: "SPIRE_CSI_TMPFS_SIZE",
    default: "4m",
    help: "size limit of each volume's tmpfs (mount -o size=)",
    schema: z.string().regex(/^[1-9][0-9]*[kmg]?$/, "must look like 4m, 512k or 1g"),
  },
  "selinux-context": {
    env: "SPIRE_CSI_SELINUX_CONTEXT",
    default: "system_u:object_r:container_file_t:s0",
    help: "SELinux context each volume's tmpfs is mounted with (context=), so files written after kubelet's relabel are readable by confined pods; a context= in kubelet's mount flags wins; none: no context= option. Only applied where the node runs SELinux",
    schema: z.union([z.literal("none").transform(() => undefined), seLinuxContextSchema]),
  },
  "reconnect-min": {
    env: "SPIRE_CSI_RECONNECT_MIN",
    default: "500ms",
    help: "first delay before resubscribing to the agent after a stream fails (doubles, with jitter)",
    schema: durationSchema.pipe(z.number().min(1)),
  },
  "reconnect-max": {
    env: "SPIRE_CSI_RECONNECT_MAX",
    default: "30s",
    help: "cap of the resubscribe delay",
    schema: durationSchema.pipe(z.number().min(1)),
  },
  "max-agent-calls": {
    env: "SPIRE_CSI_MAX_AGENT_CALLS",
    default: "32",
    help: "cap on agent calls in flight for the whole driver (X.509 stream opens until the first answer, JWT-SVID fetches); more wait their turn. SPIRE v1.15.3's agent deadlocked at a few hundred concurrent calls",
    schema: z.coerce.number().int("must be a whole number").min(1, "must be at least 1").max(256, "must be at most 256 (the agent deadlocks at a few hundred)"),
  },
  "jwt-fetch-timeout": {
    env: "SPIRE_CSI_JWT_FETCH_TIMEOUT",
    default: "30s",
    help: "deadline of one FetchJWTSVIDs call; an agent that never answers would otherwise hold one of --max-agent-calls for good and the volume's tokens would never refresh",
    schema: durationSchema.pipe(z.number().min(100).max(300_000)),
  },
  "agent-probe-timeout": {
    env: "SPIRE_CSI_AGENT_PROBE_TIMEOUT",
    default: "5s",
    help: "readiness: the SPIRE agent must answer a cheap call within this long (probed every twice this long); a deadlocked agent makes /readyz fail",
    schema: durationSchema.pipe(z.number().min(100).max(60_000)),
  },
  "health-address": {
    env: "SPIRE_CSI_HEALTH_ADDRESS",
    default: "0.0.0.0:9808",
    help: "host:port serving /healthz (liveness: the CSI server answers on its socket) and /readyz (readiness: the SPIRE agent is reachable); empty disables it",
    schema: hostPort,
  },
  "metrics-address": {
    env: "SPIRE_CSI_METRICS_ADDRESS",
    default: "0.0.0.0:9809",
    help: "host:port serving /metrics; empty disables it; may equal --health-address (one listener serves both)",
    schema: hostPort,
  },
  "log-level": {
    env: "SPIRE_CSI_LOG_LEVEL",
    default: "info",
    help: "trace, debug, info, warn, error or fatal",
    schema: z.enum(["trace", "debug", "info", "warn", "error", "fatal"]),
  },
} as const;

type OptionName = keyof typeof options;

export interface DriverConfig {
  pluginSocket: string;
  pluginSocketHostPath: string;
  /** Empty when self-registration is disabled. */
  registrationSocket: string;
  nodeId: string;
  agentSocket: string;
  /** Undefined when not configured. */
  trustDomain: string | undefined;
  kubeletRoot: string;
  metadataDir: string;
  publishTimeoutMs: number;
  volumeBacking: "tmpfs" | "directory";
  tmpfsSize: string;
  /** The tmpfs context= option for volumes kubelet sends none for; undefined for `none`. */
  seLinuxContext: string | undefined;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  maxAgentCalls: number;
  jwtFetchTimeoutMs: number;
  agentProbeTimeoutMs: number;
  /** Empty when disabled. */
  healthAddress: string;
  /** Empty when disabled. */
  metricsAddress: string;
  logLevel: "trace" | "debug" | "info" | "warn" | "error" | "fatal";
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

export function helpText(): string {
  const lines = ["Usage: spire-csi-driver [options]", "", "Options (flag, environment variable, default):"];
  for (const [name, option] of Object.entries(options)) {
    const shown = option.default ?? "(see below)";
    lines.push(`  --${name} <value>   $${option.env}   default: ${shown}`);
    lines.push(`      ${option.help}`);
  }
  lines.push("  --help            print this text");
  return lines.join("\n");
}

/** Reads flags and environment into one validated config; throws ConfigError naming the option. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv): DriverConfig {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: Object.fromEntries(Object.keys(options).map((name) => [name, { type: "string" as const }])),
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new ConfigError(`${(error as Error).message}; run with --help for the options`);
  }
  const raw = (name: OptionName): string | undefined => {
    const flag = parsed.values[name];
    if (typeof flag === "string") return flag;
    return env[options[name].env] ?? options[name].default;
  };
  const value = <N extends OptionName>(name: N, fallback?: string): z.output<(typeof options)[N]["schema"]> => {
    const input = raw(name) ?? fallback;
    const result = options[name].schema.safeParse(input);
    if (!result.success) {
      const reason = result.error.issues[0]?.message ?? "invalid";
      throw new ConfigError(`--${name} (${options[name].env}) = ${JSON.stringify(input)}: ${reason}`);
    }
    return result.data as z.output<(typeof options)[N]["schema"]>;
  };
  const pluginSocket = value("plugin-socket");
  const kubeletRoot = value("kubelet-root");
  const config: DriverConfig = {
    pluginSocket,
    pluginSocketHostPath: value("plugin-socket-host-path", pluginSocket),
    registrationSocket: value("registration-socket", join(kubeletRoot, "plugins_registry", "csi.spire.io-reg.sock")),
    nodeId: value("node-id", env.NODE_NAME || hostname()),
    agentSocket: value("agent-socket"),
    trustDomain: value("trust-domain"),
    kubeletRoot,
    metadataDir: value("metadata-dir"),
    publishTimeoutMs: value("publish-timeout"),
    volumeBacking: value("volume-backing"),
    tmpfsSize: value("tmpfs-size"),
    seLinuxContext: value("selinux-context"),
    reconnectMinMs: value("reconnect-min"),
    reconnectMaxMs: value("reconnect-max"),
    maxAgentCalls: value("max-agent-calls"),
    jwtFetchTimeoutMs: value("jwt-fetch-timeout"),
    agentProbeTimeoutMs: value("agent-probe-timeout"),
    healthAddress: value("health-address"),
    metricsAddress: value("metrics-address"),
    logLevel: value("log-level"),
  };
  if (config.reconnectMaxMs < config.reconnectMinMs) {
    throw new ConfigError("--reconnect-max must not be smaller than --reconnect-min");
  }
  return config;
}
