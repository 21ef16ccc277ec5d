# syntax=docker/dockerfile:1
#
# Image of csi.spire.io, the SPIRE CSI node plugin.
#
#   docker build -t spire-csi-driver:dev --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Runs as root and needs a privileged container (see charts/spire-csi-driver/templates/daemonset.yaml):
# - mount(2)/umount(2) of the per-volume tmpfs (`mount -t tmpfs`, `umount`) need CAP_SYS_ADMIN in
#   the host's mount namespace;
# - the tmpfs must propagate to the host (kubelet binds it into the pod, and it must outlive a
#   driver restart), which takes mountPropagation: Bidirectional on the kubelet pods dir, and the
#   API server accepts Bidirectional only for privileged containers;
# - the CSI socket (0600), the metadata dir (0700) and the targets are root-owned, and applying a
#   pod's fsGroup takes chown.
# With --volume-backing=directory (development) no mount happens, but root is still needed.

ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: TypeScript -> dist/ ----------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
# Manifests first, so the dependency layer is reused while only sources change.
COPY package.json package-lock.json ./
COPY metadata-store/package.json metadata-store/package.json
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json tsconfig.metadata-store.build.json ./
# Generated protobuf code is committed in src/gen: no `buf generate` here.
COPY src src
COPY metadata-store/src metadata-store/src
# `npm run build` emits metadata-store/dist/ and dist/src/main.js. At run time the workspace
# package resolves to metadata-store/dist/index.js through its "production" export condition
# (see ENTRYPOINT); the driver finds the root package.json for its version from dist/src/.
RUN npm run build && test -f dist/src/main.js && test -f metadata-store/dist/index.js

# ---- production dependencies only --------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY metadata-store/package.json metadata-store/package.json
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# ---- runtime -----------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
# An ARG declared before the first FROM is in scope only in FROM lines: declare it again so the
# base.name label below names the image actually used.
ARG NODE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="spire-csi-driver" \
      org.opencontainers.image.description="csi.spire.io: Kubernetes CSI node plugin delivering SPIFFE identities from the SPIRE agent (Delegated Identity API) as rotating files in pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="spire-csi-driver" \
      org.opencontainers.image.base.name="docker.io/library/${NODE_IMAGE}"

# `mount` and `umount` (util-linux) for the per-volume tmpfs. Debian ships them in the
# required `mount` package; installing it explicitly keeps that from silently changing.
RUN apt-get update \
 && apt-get install -y --no-install-recommends mount util-linux \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Two malloc arenas instead of glibc's default of up to 8 per core: Node's threads (libuv's pool,
# V8's workers) each got an arena of their own, and memory freed after a burst stayed mapped in
# them. Measured with the bench's driver (which runs with this file's ENV and ENTRYPOINT flags):
# RSS after 250 volumes were published, rotated and unpublished again, 10 s later, 111–119 MB
# with the default and 99–100 MB with 2; idle and at 250 volumes within 1–2 MB.
ENV NODE_ENV=production MALLOC_ARENA_MAX=2
COPY --from=deps /app/node_modules node_modules
COPY --from=deps /app/package.json /app/package-lock.json ./
COPY --from=deps /app/metadata-store/package.json metadata-store/package.json
COPY --from=build /src/dist dist
COPY --from=build /src/metadata-store/dist metadata-store/dist

# Root on purpose (see the top of this file). The driver handles SIGTERM itself: it stops its
# streams and leaves every volume's tmpfs and record in place for the next start to re-adopt.
USER 0:0
# The "production" condition makes @spire-csi-driver/metadata-store resolve to its compiled dist/.
# Memory flags, measured with `npm run bench` (which starts the driver with exactly these flags):
# a 1 MB young generation keeps RSS flat under publish bursts (V8 grows it to 16 MB per
# semi-space by default), and --optimize-for-size makes the old generation grow less eagerly
# (about 25% less memory per volume at 250 volumes, no measurable cost in publish or rotation).
# No --max-old-space-size, decided after the publish floods of issue 12 (test/e2e/agent-flood):
# RSS after a flood stays near its peak while the heap shrinks back after a GC, because V8 and
# malloc keep the freed pages mapped, and a second flood reuses them (RSS 221 MB after one
# flood, 216 MB after a second, run through tsx), so it is retained memory, not a leak. What a
# flood costs is bounded by the work it can start: --max-agent-calls and --publish-timeout (the
# highest RSS seen fell from 387 MB without the agent-call cap to 252 MB). An old-space cap would
# only turn a bigger flood into a heap OOM crash and a restart of every volume's rotation.
ENTRYPOINT ["node", "--conditions=production", "--enable-source-maps", "--max-semi-space-size=1", "--optimize-for-size", "dist/src/main.js"]
