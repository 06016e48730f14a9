package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetflow/fleetflow/internal/health"
)

// AlertKind is a kind of problem a health check finds; internal/health owns the rules behind each.
type AlertKind string

// Alert kinds.
const (
	AlertOffline              AlertKind = health.KindOffline              // not connected for longer than the rule allows
	AlertUnhealthy            AlertKind = health.KindUnhealthy            // reported.health.status is failing
	AlertDesiredPending       AlertKind = health.KindDesiredPending       // desired not acknowledged within the limit
	AlertFirmwareNoncompliant AlertKind = health.KindFirmwareNoncompliant // not on the version of the latest completed rollout that targets it
	AlertCredentialExpiring   AlertKind = health.KindCredentialExpiring   // the device's credential expires soon
)

// AlertState is an alert as operators see it.
type AlertState string

// Alert states: resolved once the problem is gone, else acked once someone acknowledged it, else open.
const (
	AlertOpen     AlertState = "open"
	AlertAcked    AlertState = "acked"
	AlertResolved AlertState = "resolved"
)

// HealthSummary is the fleet at a glance as one health check saw it; the registry keeps it per run.
type HealthSummary struct {
	At       time.Time        `json:"at"`
	Devices  int64            `json:"devices"` // not retired
	Active   int64            `json:"active"`
	Disabled int64            `json:"disabled"`
	Retired  int64            `json:"retired"`
	Online   int64            `json:"online"`
	Offline  int64            `json:"offline"`
	Problems map[string]int64 `json:"problems"` // devices with a problem now, per alert kind
	Opened   int64            `json:"opened"`   // alerts this check opened
	Resolved int64            `json:"resolved"` // alerts this check resolved
	Open     int64            `json:"open"`     // alerts open after this check
	Duration time.Duration    `json:"durationNs"`
	// Rules are the limits the check applied, so that a trend can tell a fleet that got worse from
	// stricter rules.
	Rules health.Rules `json:"rules"`
	// Rollouts are the completed rollouts whose versions the firmware rule held devices to, newest first.
	Rollouts []string `json:"rollouts,omitempty"`
}

// ProblemCounts are the devices with each kind of problem (a struct, not a map, so that workflow code
// never iterates a map).
type ProblemCounts struct {
	Offline              int64 `json:"offline"`
	Unhealthy            int64 `json:"unhealthy"`
	DesiredPending       int64 `json:"desiredPending"`
	FirmwareNoncompliant int64 `json:"firmwareNoncompliant"`
	CredentialExpiring   int64 `json:"credentialExpiring"`
}

// ProblemCountsOf takes the counts per kind from a map keyed by alert kind.
func ProblemCountsOf(m map[string]int64) ProblemCounts {
	return ProblemCounts{Offline: m[health.KindOffline], Unhealthy: m[health.KindUnhealthy],
		DesiredPending: m[health.KindDesiredPending], FirmwareNoncompliant: m[health.KindFirmwareNoncompliant],
		CredentialExpiring: m[health.KindCredentialExpiring]}
}

// MonitorStore is what the health check's activity needs from the registry.
type MonitorStore interface {
	// RunHealthCheck evaluates rules over the whole fleet, opens and resolves alerts, and records the
	// summary under runID (a retry replaces it).
	RunHealthCheck(ctx context.Context, runID string, rules health.Rules) (HealthSummary, error)
}

// PrepareHealthCheck fills in a check's default rules and refuses what no MonitorStore may run: invalid
// rules or an empty run id (the run id is what makes a retried check replace its own summary).
func PrepareHealthCheck(runID string, rules health.Rules) (health.Rules, error) {
	rules = rules.WithDefaults()
	if err := rules.Validate(); err != nil {
		return rules, fmt.Errorf("health check %s: %w", runID, err)
	}
	if runID == "" {
		return rules, errors.New("health check: a run id is required")
	}
	return rules, nil
}
