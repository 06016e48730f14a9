# syntax=docker/dockerfile:1
# bin/fleetflow as an image: the CLI, `fleetflow gateway`, `fleetflow migrate` and `fleetflow nats-node`, chosen by
# the container's command (ENTRYPOINT is the binary). Build from the repository root:
#
#   docker build -f deploy/docker/fleetflow.Dockerfile -t fleetflow:dev --build-arg VERSION=$(git describe --always) .
#
# Static (CGO_ENABLED=0) on distroless/static: no shell, no package manager, uid 65532. The probe binary beside
# it is the health check (deploy/probe), since the image has no curl; the compose file calls it per service,
# because one image runs servers and one-shot jobs alike.

# The builder's Go is the toolchain of go.mod (deploy/validate checks that they agree).
FROM golang:1.26.8 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOOS=linux GOFLAGS=-buildvcs=false
# Modules first: a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/fleetflow ./starter && \
    go build -trimpath -ldflags "-s -w" -o /out/probe ./deploy/probe

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fleetflow /out/probe /usr/local/bin/
# Devices: 8883 (MQTT over TLS); gateway metrics: 9464; NATS node: 4222 clients, 6222 routes.
EXPOSE 8883 9464 4222 6222
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fleetflow"]
CMD ["--help"]
