# The channelsd node image: one static binary on an empty base.
#
# No Go toolchain image is pulled: test/images/build.sh compiles the binary
# on the host and builds this file with a tiny context holding
#
#   channelsd              CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' ./cmd/channelsd
#   ca-certificates.crt    the host's /etc/ssl/certs/ca-certificates.crt (for rediss://)
#
# so `test/images/build.sh` (or `make images`) is the way to build it, not
# `docker build .` in the repository. Works with the classic builder of
# Docker 20.10 and with BuildKit.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY channelsd /channelsd
USER 65534:65534
EXPOSE 4000
ENTRYPOINT ["/channelsd"]
