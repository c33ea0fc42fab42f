# syntax=docker/dockerfile:1.7
# The node agent: Node 22 LTS, the agent bundle, the `ziti-cni` executable the installer copies
# to the node (a static front end plus ziti-cni.d/: the Node SEA built here with the same Node
# as the runtime, and the loader and libraries it needs, taken from this Debian), the eBPF
# datapath's tc program, and the tools the agent runs inside pod netns: nft, ip, tc, nsenter, sysctl.
# One image per platform (linux/amd64, linux/arm64): the build stage runs on the target platform
# and builds the plugin for TARGETARCH only (dist/<arch>/ has the same names on every arch), so the
# executable the installer copies is always the node's own arch.
ARG NODE_IMAGE=docker.io/library/node:22.23.3-bookworm-slim

FROM ${NODE_IMAGE} AS build
# Set by BuildKit (amd64, arm64); the plugin is built and copied for exactly this arch.
ARG TARGETARCH
WORKDIR /src
# clang + libbpf headers compile the eBPF datapath's tc program; gcc + libc6-dev (libc.a) the
# static front end.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g pnpm@10.34.9
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml .npmrc tsconfig.json ./
COPY shared/package.json shared/
COPY webhook/package.json webhook/
COPY cni-plugin/package.json cni-plugin/
COPY e2e/package.json e2e/
RUN pnpm install --frozen-lockfile
COPY shared shared
COPY cni-plugin cni-plugin
COPY webhook/src/tls webhook/src/tls
RUN test -n "$TARGETARCH" || { echo "TARGETARCH is unset: build this image with BuildKit" >&2; exit 1; } \
 && ZITI_CNI_ARCHES="$TARGETARCH" pnpm --filter @ziti-cni/cni-plugin run build

FROM ${NODE_IMAGE}
ARG TARGETARCH
LABEL org.opencontainers.image.description="ziti-cni node agent and CNI plugin installer"
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 util-linux procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/cni-plugin/dist/agent.mjs /opt/ziti-cni/agent.mjs
COPY --from=build /src/cni-plugin/dist/cli.mjs /opt/ziti-cni/cli.mjs
# Also the validator init container's command (the webhook's validator.image is this image).
COPY --from=build /src/cni-plugin/dist/validator.mjs /opt/ziti-cni/validator.mjs
COPY --from=build /src/cni-plugin/dist/${TARGETARCH}/ziti-cni /opt/ziti-cni/ziti-cni
COPY --from=build /src/cni-plugin/dist/${TARGETARCH}/ziti-cni.d /opt/ziti-cni/ziti-cni.d
COPY --from=build /src/cni-plugin/dist/tproxy.bpf.o /opt/ziti-cni/tproxy.bpf.o
# The device plugin API the agent loads next to agent.mjs (tun mode).
COPY --from=build /src/cni-plugin/dist/v1beta1.proto /opt/ziti-cni/v1beta1.proto
RUN printf '#!/bin/sh\nexec node /opt/ziti-cni/cli.mjs "$@"\n' > /usr/local/bin/ziti-cni && chmod 0755 /usr/local/bin/ziti-cni
ENTRYPOINT ["node", "/opt/ziti-cni/agent.mjs"]
CMD ["run"]
