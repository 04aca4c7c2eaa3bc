# mcptun: one static binary, both roles (relay and agent).
#
#   docker build -t mcptun --build-arg VERSION=$(git describe --tags --always) .
#   docker run --rm -v "$PWD/relay:/etc/mcptun:ro" \
#     -p 7443:7443/udp -p 7443:7443/tcp -p 8443:8443 mcptun relay --config /etc/mcptun/relay.yaml
#
# The final image holds the binary only (no shell, no Node, no Python) and
# runs as an unprivileged user. An agent whose servers are npx or uvx
# commands needs those programs: copy the binary into an image that has
# them instead, e.g.  COPY --from=mcptun /usr/local/bin/mcptun /usr/local/bin/
# in a FROM node:22-slim image.

# --- build: a static binary (no cgo, so it runs on scratch/distroless) ---
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mcptun ./cmd/mcptun

# --- run: distroless static, non-root (uid 65532) ---
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mcptun /usr/local/bin/mcptun
USER 65532:65532
# 7443: tunnel (QUIC on UDP and TLS on TCP); 8443: MCP clients; 9090: admin.
EXPOSE 7443/udp 7443/tcp 8443/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/mcptun"]
CMD ["relay", "--config", "/etc/mcptun/relay.yaml"]
