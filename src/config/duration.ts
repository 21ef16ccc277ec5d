import { z } from "zod";

const unitMs = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

/** Parses "500ms", "30s", "2m", "1h" or a bare number of milliseconds. */
export function parseDurationMs(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = (match[2] ?? "ms") as keyof typeof unitMs;
  return Math.round(Number(match[1]) * unitMs[unit]);
}

export const durationSchema = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const ms = typeof value === "number" ? value : parseDurationMs(value);
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
    ctx.addIssue({ code: "custom", message: `"${value}" is not a duration; write e.g. 500ms, 30s or 2m` });
    return z.NEVER;
  }
  return ms;
});
