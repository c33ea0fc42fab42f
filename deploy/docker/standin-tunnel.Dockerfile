# syntax=docker/dockerfile:1.7
# For the kind suite only: stands in for openziti/ziti-tunnel (`proxy svc:port ...`) where
# there is no Ziti network. Same args, same unprivileged uid; answers with the service name.
ARG NODE_IMAGE=docker.io/library/node:22.23.3-bookworm-slim
FROM ${NODE_IMAGE}
COPY e2e/node/standins/proxy-sidecar.ts /app/proxy-sidecar.ts
USER 2171:2171
ENTRYPOINT ["node", "/app/proxy-sidecar.ts"]
