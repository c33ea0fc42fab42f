# syntax=docker/dockerfile:1.7
# The admission webhook: one esbuild bundle (production dependencies only, inlined), run by
# Node 22 LTS as a non-root user on a read-only root filesystem (set by the Deployment).
ARG NODE_IMAGE=docker.io/library/node:22.23.3-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
RUN npm install -g pnpm@10.34.9
COPY package.json pnpm-lock.yaml pnpm-workspace.yaml .npmrc tsconfig.json ./
COPY shared/package.json shared/
COPY webhook/package.json webhook/
COPY cni-plugin/package.json cni-plugin/
COPY e2e/package.json e2e/
RUN pnpm install --frozen-lockfile
COPY shared shared
COPY webhook webhook
RUN pnpm --filter @ziti-cni/webhook run build

FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/ziti-cni/ziti-cni" \
      org.opencontainers.image.description="ziti-cni admission webhook"
COPY --from=build /src/webhook/dist/webhook.mjs /app/webhook.mjs
COPY --from=build /src/webhook/dist/inject.mjs /app/inject.mjs
# identity: auto: the identity controller, and the pods' enrollment init step (same image).
COPY --from=build /src/webhook/dist/identity-controller.mjs /app/identity-controller.mjs
COPY --from=build /src/webhook/dist/enroll.mjs /app/enroll.mjs
USER 65532:65532
EXPOSE 9443
ENTRYPOINT ["node", "/app/webhook.mjs"]
