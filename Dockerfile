# syntax=docker/dockerfile:1
# meterd as a container: one static binary (pure-Go SQLite, time zones embedded with time/tzdata), run as a
# non-root user on an image without a shell or libc. The embedded deployment: the SQLite store lives on the volume
# /var/lib/meterd; the config is mounted at /etc/meterd/meterd.yaml (deploy/compose.yaml and deploy/kubernetes/
# show how, with the KooGallery key and the ingest tokens as secrets).
#
#   docker build -t meterd .
#   docker run --rm meterd version
#   docker run -v meterd-data:/var/lib/meterd -v "$PWD/deploy/systemd/meterd.yaml:/etc/meterd/meterd.yaml:ro" ... meterd
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: a static binary (modernc.org/sqlite is pure Go). The binary must run on the distroless image, so
# it is checked to start here.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/meterd ./cmd/meterd && \
    /out/meterd version && \
    mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meterd /usr/local/bin/meterd
# The store's directory, owned by the image's non-root user (65532) so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/meterd
USER 65532:65532
WORKDIR /var/lib/meterd
ENV METERD_STORE_SQLITE_PATH=/var/lib/meterd/meterd.db
VOLUME ["/var/lib/meterd"]
# The HTTP API, /metrics, /healthz and /readyz (config key listen, e.g. 0.0.0.0:8080 with ingest.tokens_file).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meterd"]
CMD ["serve", "--config", "/etc/meterd/meterd.yaml"]
