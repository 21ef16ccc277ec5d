/**
 * Which SVID a volume gets when several registration entries match its pod: the one whose SPIFFE
 * ID and/or hint the volume asked for; otherwise the smallest SPIFFE ID (then hint), so the
 * choice does not depend on the order the agent happens to send them in. Returns -1 when the
 * volume asked for an SVID the agent did not send.
 */
export function chooseSvid(
  svids: readonly { spiffeId: string; hint: string }[],
  wanted: { spiffeId: string | undefined; hint: string | undefined },
): number {
  let best = -1;
  svids.forEach((svid, index) => {
    if (wanted.spiffeId !== undefined && svid.spiffeId !== wanted.spiffeId) return;
    if (wanted.hint !== undefined && svid.hint !== wanted.hint) return;
    const current = svids[best];
    if (!current || svid.spiffeId < current.spiffeId || (svid.spiffeId === current.spiffeId && svid.hint < current.hint)) best = index;
  });
  return best;
}
