# syntax=docker/dockerfile:1.7
# For the kind suite only: stands in for openziti/ziti-tunnel (entrypoint + `ziti tunnel proxy`)
# where there is no Ziti network. The stand-in reproduces the real image's env contract and
# proxy behaviour from its source (e2e/node/standins/ziti-tunnel.ts cites each line) and
# answers every exchange with the service name.
ARG NODE_IMAGE=docker.io/library/node:22.23.3-bookworm-slim
FROM ${NODE_IMAGE}
COPY e2e/node/standins/ziti-tunnel.ts /opt/zcni/standins/ziti-tunnel.ts
# Like the real image: WORKDIR /netfoundry, ENTRYPOINT ["/entrypoint.sh"], CMD ["run"].
WORKDIR /netfoundry
RUN printf '#!/bin/bash\nexec node /opt/zcni/standins/ziti-tunnel.ts "$@"\n' > /entrypoint.sh && chmod 0755 /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["run"]
