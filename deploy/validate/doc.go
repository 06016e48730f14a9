// Package validate checks deploy/ offline, in `make test`: the docker compose file loads with compose-go and
// is wired as production needs it (images pinned, the migrate job gating every fleetflow process, ports
// unique, NATS routes, the proxy's backends, Prometheus' targets); the Helm chart renders with Helm's own
// engine and every object decodes strictly into the Kubernetes API types; the Dockerfiles are multi-stage,
// static and non-root. No container engine or cluster is needed.
//
// It is a module of its own (deploy/validate/go.mod), so that Helm, the Kubernetes API and compose-go never
// enter the product's go.mod; `make test` and `make lint` run it as well.
package validate
