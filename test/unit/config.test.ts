import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, helpText, loadConfig, options } from "../../src/config/config.js";

test("defaults apply when nothing is set", () => {
  const config = loadConfig([], { NODE_NAME: "node-a" });
  assert.equal(config.pluginSocket, "/csi/csi.sock");
  assert.equal(config.nodeId, "node-a");
  assert.equal(config.agentSocket, "/run/spire/admin/admin.sock");
  assert.equal(config.kubeletRoot, "/var/lib/kubelet");
  assert.equal(config.publishTimeoutMs, 30_000);
  assert.equal(config.volumeBacking, "tmpfs");
  assert.equal(config.reconnectMinMs, 500);
  assert.equal(config.reconnectMaxMs, 30_000);
  assert.equal(config.jwtFetchTimeoutMs, 30_000);
});

test("flags win over environment, environment over defaults", () => {
  const config = loadConfig(["--publish-timeout", "5s", "--node-id", "from-flag"], {
    SPIRE_CSI_PUBLISH_TIMEOUT: "9s",
    SPIRE_CSI_NODE_ID: "from-env",
    SPIRE_CSI_VOLUME_BACKING: "directory",
  });
  assert.equal(config.publishTimeoutMs, 5_000);
  assert.equal(config.nodeId, "from-flag");
  assert.equal(config.volumeBacking, "directory");
});

test("bad values name the option and the rule", () => {
  assert.throws(() => loadConfig(["--publish-timeout", "soon"], {}), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.match(error.message, /--publish-timeout \(SPIRE_CSI_PUBLISH_TIMEOUT\) = "soon": .*duration/);
    return true;
  });
  assert.throws(() => loadConfig(["--agent-socket", "relative.sock"], {}), /--agent-socket .*absolute path/);
  assert.throws(() => loadConfig(["--volume-backing", "nfs"], {}), /--volume-backing/);
  assert.throws(() => loadConfig(["--no-such-flag", "x"], {}), /--help/);
  assert.throws(() => loadConfig(["--reconnect-min", "10s", "--reconnect-max", "1s"], {}), /--reconnect-max/);
  assert.throws(() => loadConfig(["--jwt-fetch-timeout", "0s"], {}), /--jwt-fetch-timeout \(SPIRE_CSI_JWT_FETCH_TIMEOUT\) = "0s"/);
});

test("--help lists every option with its environment variable and default", () => {
  const text = helpText();
  for (const [name, option] of Object.entries(options)) {
    assert.ok(text.includes(`--${name}`), `help mentions --${name}`);
    assert.ok(text.includes(`$${option.env}`), `help mentions $${option.env}`);
    if (option.default) assert.ok(text.includes(`default: ${option.default}`), `help shows the default of --${name}`);
  }
});

test("path options are normalised: a trailing slash or doubled slash in --kubelet-root does not break target checks", () => {
  const config = loadConfig(["--kubelet-root", "/var/lib/kubelet/", "--metadata-dir", "/var/lib//spire-csi-driver/volumes/", "--plugin-socket", "/csi/./csi.sock"], {});
  assert.equal(config.kubeletRoot, "/var/lib/kubelet");
  assert.equal(config.metadataDir, "/var/lib/spire-csi-driver/volumes");
  assert.equal(config.pluginSocket, "/csi/csi.sock");
  assert.equal(loadConfig([], { SPIRE_CSI_KUBELET_ROOT: "/data/kubelet/" }).kubeletRoot, "/data/kubelet");
});

test("self-registration and health: defaults follow --kubelet-root and --plugin-socket; empty disables", () => {
  const defaults = loadConfig(["--kubelet-root", "/var/lib/k0s/kubelet/", "--plugin-socket", "/csi/csi.sock"], {});
  assert.equal(defaults.registrationSocket, "/var/lib/k0s/kubelet/plugins_registry/csi.spire.io-reg.sock");
  assert.equal(defaults.pluginSocketHostPath, "/csi/csi.sock", "on the host the socket is where the driver binds it");
  assert.equal(defaults.healthAddress, "0.0.0.0:9808");
  assert.equal(defaults.metricsAddress, "0.0.0.0:9809");
  const inPod = loadConfig(["--registration-socket", "/registration/csi.spire.io-reg.sock", "--plugin-socket-host-path", "/var/lib/kubelet/plugins/csi.spire.io/csi.sock"], {});
  assert.equal(inPod.registrationSocket, "/registration/csi.spire.io-reg.sock");
  assert.equal(inPod.pluginSocketHostPath, "/var/lib/kubelet/plugins/csi.spire.io/csi.sock");
  const disabled = loadConfig(["--registration-socket", "", "--health-address", ""], {});
  assert.equal(disabled.registrationSocket, "");
  assert.equal(disabled.healthAddress, "");
  assert.equal(loadConfig([], { SPIRE_CSI_REGISTRATION_SOCKET: "" }).registrationSocket, "");
  assert.throws(() => loadConfig(["--registration-socket", "reg.sock"], {}), /--registration-socket .*absolute path/);
  assert.throws(() => loadConfig(["--health-address", "9808"], {}), /--health-address .*host:port/);
});
