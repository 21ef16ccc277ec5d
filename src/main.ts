import { ConfigError, helpText, loadConfig, type DriverConfig } from "./config/config.js";
import { createLogger } from "./log.js";

async function main(): Promise<void> {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    console.log(helpText());
    return;
  }
  let config: DriverConfig;
  try {
    config = loadConfig(process.argv.slice(2), process.env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`spire-csi-driver: ${error.message}`);
    process.exitCode = 2;
    return;
  }
  const logger = createLogger(config.logLevel);
  // Loaded after the config is known good, so --help and config errors need none of it.
  const { runDriver } = await import("./driver.js");
  const driver = await runDriver(config, logger);
  let stopping = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down; volumes keep their files and are re-adopted on the next start");
    driver.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

main().catch((error: unknown) => {
  console.error("spire-csi-driver: fatal:", error);
  process.exit(1);
});
