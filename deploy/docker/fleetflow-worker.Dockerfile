# syntax=docker/dockerfile:1
# bin/fleetflow-worker as an image: runs fleetflow's workflows and activities. Build from the repository root:
#
#   docker build -f deploy/docker/fleetflow-worker.Dockerfile -t fleetflow-worker:dev .
#
# Static (CGO_ENABLED=0) on distroless/static: no shell, no package manager, uid 65532. Metrics and the
# /livez and /readyz probes are served on :9465 (FLEETFLOW_WORKER_METRICS); the HEALTHCHECK asks /readyz
# with the probe binary (deploy/probe), since the image has no curl.

# The builder's Go is the toolchain of go.mod (deploy/validate checks that they agree).
FROM golang:1.26.8 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOOS=linux GOFLAGS=-buildvcs=false
# Modules first: a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags "-s -w" -o /out/fleetflow-worker ./worker && \
    go build -trimpath -ldflags "-s -w" -o /out/probe ./deploy/probe

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/fleetflow-worker /out/probe /usr/local/bin/
ENV FLEETFLOW_WORKER_METRICS=:9465
EXPOSE 9465
USER 65532:65532
# /readyz answers 200 once the worker polls and reaches Temporal and Postgres, 503 while it drains.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/probe", "http://127.0.0.1:9465/readyz"]
ENTRYPOINT ["/usr/local/bin/fleetflow-worker"]
