# fleetflow: build, local stack and checks. A newcomer needs two targets: `make demo` and `make test`.
# Everything is fetched through the ordinary clients (Go module proxy, apt-get); no binary is downloaded.

GO            ?= go
BIN           := $(CURDIR)/bin
TEMPORAL_CLI  := github.com/temporalio/cli/cmd/temporal@v1.5.1
WORKFLOWCHECK := go.temporal.io/sdk/contrib/tools/workflowcheck@v0.6.0
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# `fleetflow version` prints this (git describe of the checkout; empty outside git: the build info is used).
VERSION       ?= $(shell git describe --always --dirty 2>/dev/null)
LDFLAGS       := $(if $(VERSION),-X main.version=$(VERSION))

# Tests and benchmarks start their own dev servers from this binary (internal/testenv).
TEST_ENV := FLEETFLOW_TEMPORAL_CLI=$(BIN)/temporal

# deploy/validate checks deploy/ (compose file, Helm chart, Dockerfiles) offline. It is a module of its own so that
# Helm, the Kubernetes API and compose-go stay out of the product's go.mod; `./...` at the root does not reach it.
DEPLOY_VALIDATE := deploy/validate

.DEFAULT_GOAL := build
.PHONY: build deps up down status demo test race vet workflowcheck lint bench fuzz chaos soak clean reset help cluster-bins cluster-test

help:
	@echo "make demo     start the local stack and run the demo (leaves the stack running)"
	@echo "make test     vet, workflowcheck and all tests against throwaway services (deploy/ validated offline too)"
	@echo "make race     the goroutine-heavy packages under the race detector (part of make test)"
	@echo "make up | down | status    manage the local stack (fleetflow dev ...); make up GATEWAYS=3 WORKERS=2"
	@echo "make build    bin/fleetflow and bin/fleetflow-worker"
	@echo "make deps     Postgres server binaries and mosquitto clients (apt-get), bin/temporal (go install)"
	@echo "make lint     go vet + staticcheck + the import rule"
	@echo "make bench    benchmarks (slow; not part of make test)"
	@echo "make cluster-test  build the Temporal server (first time: many minutes) and run the kill-everything e2e on it"
	@echo "make fuzz     every fuzz target (query, topics, payloads, manifests, twin patches, scheme fast path, gateway ingest) FUZZTIME each (30s)"
	@echo "make chaos    the slow chaos tests: workers killed in each activity kind, gateways restarted, killed and frozen"
	@echo "make soak     SOAK (10m) of 5,000 churning devices under concurrent operations; prints its invariants"
	@echo "make clean    remove built binaries (keeps bin/temporal and bin/temporal-server, which take minutes to build)"
	@echo "make reset    stop the stack and delete its data (.fleetflow/)"

build:
	@echo "== build bin/fleetflow bin/fleetflow-worker"
	@$(GO) build -ldflags "$(LDFLAGS)" -o bin/fleetflow ./starter
	@$(GO) build -o bin/fleetflow-worker ./worker

bin/temporal:
	@echo "== build bin/temporal from the Go module proxy (first time only; takes a few minutes)"
	@GOBIN=$(BIN) $(GO) install $(TEMPORAL_CLI)

deps: bin/temporal
	@deploy/ensure-postgres.sh
	@deploy/ensure-mosquitto-clients.sh

# `make up GATEWAYS=3 WORKERS=2 NATS_NODES=3` (also for `make demo`) sizes the stack; unset keeps what runs, at
# least one of each.
up: build deps
	@bin/fleetflow dev up $(if $(GATEWAYS),--gateways $(GATEWAYS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(NATS_NODES),--nats-nodes $(NATS_NODES))

# Works when nothing runs; builds the CLI first on a fresh clone.
down:
	@test -x bin/fleetflow || $(MAKE) --no-print-directory build
	@bin/fleetflow dev down

status:
	@test -x bin/fleetflow || $(MAKE) --no-print-directory build
	@bin/fleetflow dev status

demo: up
	@deploy/demo.sh

vet:
	@echo "== go vet"
	@$(GO) vet ./...
	@cd $(DEPLOY_VALIDATE) && $(GO) vet ./...
	@echo "== go vet for macOS (the CLI, the device SDK and the simulator run on operators' machines too)"
	@GOOS=darwin $(GO) vet ./starter/... ./internal/device/... ./internal/simulator/...

workflowcheck:
	@echo "== workflowcheck"
	@$(GO) run $(WORKFLOWCHECK) ./...

test: build deps vet workflowcheck
	@echo "== go test"
	@$(TEST_ENV) $(GO) test -count=1 -timeout 30m ./...
	@echo "== go test deploy/validate (compose file, Helm chart, Dockerfiles)"
	@cd $(DEPLOY_VALIDATE) && $(TEST_ENV) $(GO) test -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory race

# The packages whose goroutines share state (the gateway, the NATS channel, the device SDK, the simulator,
# the activities and the fake store they run against) once more under the race detector.
RACE_PKGS = ./internal/gateway/... ./internal/channel/... ./internal/device/... ./internal/simulator/... \
	./activities/... ./internal/fleet/...
race: build deps
	@echo "== go test -race"
	@$(TEST_ENV) $(GO) test -race -count=1 -timeout 30m $(RACE_PKGS)

lint: vet
	@echo "== staticcheck"
	@$(GO) run $(STATICCHECK) ./...
	@cd $(DEPLOY_VALIDATE) && $(GO) run $(STATICCHECK) ./...
	@echo "== import rule (docs/architecture.md)"
	@$(GO) test -count=1 ./internal/archtest/

# The Temporal server for `make cluster-test`, built from the Go module proxy in its own module
# (deploy/temporal-cluster), so its dependencies never enter fleetflow's go.mod nor `go build ./...`.
TEMPORAL_CLUSTER := deploy/temporal-cluster
cluster-bins:
	@echo "== build bin/temporal-server bin/temporal-sql-tool (go.temporal.io/server; the first build takes many minutes)"
	@cd $(TEMPORAL_CLUSTER) && $(GO) build -o $(BIN)/ ./cmd/temporal-server ./cmd/temporal-sql-tool

# A Temporal cluster (frontend, matching, worker, 2 history hosts) on Postgres, 3 gateways, 3 NATS nodes and
# 2 workers; a rollout during which one of each, and the whole Temporal server, are killed and restarted.
# It needs Postgres but not the Temporal CLI (bin/temporal): the server it runs is the one built here.
cluster-test: build cluster-bins
	@deploy/ensure-postgres.sh
	@echo "== go test -tags cluster (Temporal cluster e2e)"
	@FLEETFLOW_TEMPORAL_SERVER=$(BIN)/temporal-server FLEETFLOW_TEMPORAL_SQL_TOOL=$(BIN)/temporal-sql-tool \
	FLEETFLOW_TEMPORAL_SCHEMA=$$(cd $(TEMPORAL_CLUSTER) && $(GO) list -m -f '{{.Dir}}' go.temporal.io/server)/schema/postgresql/v12 \
	$(GO) test -tags cluster -count=1 -timeout 30m -run '^TestTemporalCluster' -v ./internal/e2e/

bench: build deps
	@$(TEST_ENV) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 120m ./bench/...

# Each fuzz target runs FUZZTIME (make fuzz FUZZTIME=5m); what one finds lands in its package's
# testdata/fuzz, which `go test` then runs as a regression case.
FUZZTIME ?= 30s
FUZZ_TARGETS = \
	./internal/query:FuzzCompile \
	./internal/protocol:FuzzParse ./internal/protocol:FuzzBuild ./internal/protocol:FuzzSubjectToken \
	./internal/protocol:FuzzParseJobProgress ./internal/protocol:FuzzParseState ./internal/protocol:FuzzParseDownlink \
	./internal/manifest:FuzzCSV ./internal/manifest:FuzzNDJSON \
	./internal/twin:FuzzValidate ./internal/twin:FuzzApply \
	./internal/scheme:FuzzFastPath \
	./internal/channel:FuzzRawJSON \
	./internal/gateway:FuzzDevicePayload
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "== fuzz $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg/; \
	done

# The slow chaos tests (the fast ones, such as Postgres restarted under operations, run in make test).
chaos: build deps
	@echo "== chaos tests"
	@$(TEST_ENV) $(GO) test -tags chaos -count=1 -v -timeout 60m -run '^TestChaos' ./internal/e2e/

# make soak SOAK=1h runs longer.
SOAK ?= 10m
soak: build deps
	@echo "== soak for $(SOAK)"
	@$(TEST_ENV) FLEETFLOW_SOAK=$(SOAK) $(GO) test -tags soak -count=1 -v -timeout 48h -run '^TestSoak$$' ./internal/e2e/

clean:
	rm -f bin/fleetflow bin/fleetflow-worker

reset:
	@test -x bin/fleetflow || $(MAKE) --no-print-directory build
	@bin/fleetflow dev down --purge
