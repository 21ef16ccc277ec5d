import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import type { AgentClient } from "./agent-client.js";

/** An audience no entry is ever asked about; the call is refused before any SVID is minted. */
const probeAudience = "spire-csi-driver-readiness-probe";

/**
 * Readiness of the agent beyond an open bundle stream: a deadlocked SPIRE agent keeps its
 * existing streams open but answers no new call, and no pod on the node gets an identity. Every
 * interval one cheap call is sent (FetchJWTSVIDs with no selectors: the agent checks the driver
 * and refuses it, minting nothing); any answer within the deadline, an error status included,
 * means the agent is answering. The probe bypasses the agent-call limiter on purpose: a full
 * limiter is load, not a dead agent, and must not make the driver unready.
 */
export class AgentProbe {
  private answered = true;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly client: AgentClient,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
  ) {}

  /** False after the agent left the latest probe unanswered for the whole deadline. */
  get answering(): boolean {
    return this.answered;
  }

  start(): void {
    void this.probe();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async probe(): Promise<void> {
    const answered = await this.client.fetchJWTSVIDs({ audience: [probeAudience], selectors: [] }, { signal: AbortSignal.timeout(this.timeoutMs) }).then(
      () => true,
      (error: unknown) => {
        const code = ConnectError.from(error).code;
        return code !== Code.DeadlineExceeded && code !== Code.Canceled && code !== Code.Unavailable;
      },
    );
    if (answered !== this.answered) {
      if (answered) this.logger.info("the SPIRE agent answers again");
      else this.logger.error({ timeoutMs: this.timeoutMs }, "the SPIRE agent did not answer a call within the deadline; reporting not ready");
    }
    this.answered = answered;
    if (this.stopped) return;
    // One probe at a time, the next one an interval of twice the deadline after this one ended.
    this.timer = setTimeout(() => void this.probe(), this.timeoutMs * 2);
    this.timer.unref();
  }
}
