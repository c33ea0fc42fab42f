# The tun-mode sidecar: the stock ziti-edge-tunnel image with the attach shim preloaded
# (deploy/shim/ziti-tun-attach.c; README "tun mode"). The release binary is dynamically linked
# against glibc (built on ziti-builder for glibc 2.27, openziti/ziti-tunnel-sdk-c
# .github/actions/openziti-tunnel-build-action/gh-release/Dockerfile:1), so LD_PRELOAD applies.
# The shim is built on the same UBI 9 base the upstream image uses (docker/ziti-edge-tunnel.Dockerfile:1),
# so it needs no newer glibc than the image has. Not built on this workplace (no Docker engine).
ARG ZITI_EDGE_TUNNEL_VERSION=1.18.7

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
