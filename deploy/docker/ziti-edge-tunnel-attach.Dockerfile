# The tun-mode sidecar: upstream's ziti-edge-tunnel image with the attach shim preloaded
# (deploy/shim/ziti-tun-attach.c; README "tun mode"). The version is the one the node suite
# builds from source and runs (../shared/third-party/ziti-edge-tunnel: v1.18.2, ziti-sdk-c
# 1.18.1, tlsuv v0.41.4; e2e/node/tun.test.ts, tun-shim.test.ts): change both together.
# Upstream's image (openziti/ziti-tunnel-sdk-c docker/ziti-edge-tunnel.Dockerfile) is UBI 9
# minimal with iproute (the shim's route check runs `ip -o route get`), its docker-entrypoint.sh
# as ENTRYPOINT, CMD ["run"], the `ziti` group (2171) and /ziti-edge-tunnel mode 0777; its
# binary is dynamically linked against glibc, so LD_PRELOAD applies. The shim is built on the
# same UBI 9 base, so it needs no newer glibc than the image has.
# Not built on this workplace (no Docker engine or registry): the suite stages the same layout
# from the source build instead (e2e/node/lib/test-images.ts, image localhost/zcni/ziti-edge-tunnel-attach:e2e).
ARG ZITI_EDGE_TUNNEL_VERSION=1.18.2

FROM registry.access.redhat.com/ubi9/ubi:9.6 AS shim
RUN dnf -y install --setopt=install_weak_deps=0 gcc glibc-devel && dnf clean all
COPY deploy/shim/ziti-tun-attach.c /src/ziti-tun-attach.c
RUN gcc -shared -fPIC -O2 -Wall -Werror -o /ziti-tun-attach.so /src/ziti-tun-attach.c -ldl

FROM docker.io/openziti/ziti-edge-tunnel:${ZITI_EDGE_TUNNEL_VERSION}
COPY --from=shim /ziti-tun-attach.so /usr/local/lib/ziti-tun-attach.so
ENV LD_PRELOAD=/usr/local/lib/ziti-tun-attach.so
# The webhook pins runAsUser/runAsGroup to the tun's owner (sidecarUid/sidecarGid, 2171: the
# image's own `ziti` group).
USER 2171:2171
