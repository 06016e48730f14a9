package workflows

import (
	"fmt"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/numfmt"
)

// Names of the monitor stage.
const (
	// HealthCheckIDPrefix starts every FleetHealthCheck workflow id: the schedule's action id (Temporal
	// appends the scheduled time) and `health run`'s healthcheck-<time>.
	HealthCheckIDPrefix = "healthcheck"
)

// HealthCheckInput starts FleetHealthCheck; zero durations mean the defaults of internal/health (offline
// after 10m, ack within 10m, credentials expiring within 7 days). With Rule set the check is that health
// rule's (docs/architecture.md, "Health rules"): its target and limits are the rule's, read by the check
// itself, and the durations here are ignored.
type HealthCheckInput struct {
	Rule           string        `json:"rule,omitempty"`
	OfflineAfter   time.Duration `json:"offlineAfter,omitempty"`
	AckWithin      time.Duration `json:"ackWithin,omitempty"`
	ExpiringWithin time.Duration `json:"expiringWithin,omitempty"`
}

// Rules are the input's limits as the health rules take them, defaults filled in.
func (in HealthCheckInput) Rules() health.Rules {
	return health.Rules{OfflineAfter: in.OfflineAfter, AckWithin: in.AckWithin, ExpiringWithin: in.ExpiringWithin}.WithDefaults()
}

// RunHealthCheckInput is the RunHealthCheck activity's input. RunID names the check in health_runs (the
// workflow id), so that a retried activity replaces its row rather than adding one.
type RunHealthCheckInput struct {
	RunID          string        `json:"runId"`
	Rule           string        `json:"rule,omitempty"` // a health rule's name; "" for the fleet-wide check with the limits below
	OfflineAfter   time.Duration `json:"offlineAfter"`
	AckWithin      time.Duration `json:"ackWithin"`
	ExpiringWithin time.Duration `json:"expiringWithin"`
}

// HealthCheckResult is what one check found: the fleet at a glance and what happened to the alerts.
type HealthCheckResult struct {
	RunID string `json:"runId"`
	// Rule is the health rule checked (health.FleetRule for the fleet-wide check), Target its target query
	// ("" for the whole fleet) and Rules the limits it applied.
	Rule     string              `json:"rule,omitempty"`
	Target   string              `json:"target,omitempty"`
	Rules    *health.Rules       `json:"rules,omitempty"`
	At       time.Time           `json:"at"`
	Devices  int64               `json:"devices"` // not retired (of the rule's targets)
	Active   int64               `json:"active"`
	Disabled int64               `json:"disabled"`
	Retired  int64               `json:"retired"`
	Online   int64               `json:"online"`
	Offline  int64               `json:"offline"`
	Problems fleet.ProblemCounts `json:"problems"`
	Opened   int64               `json:"opened"`   // alerts this check opened
	Resolved int64               `json:"resolved"` // alerts this check resolved
	Open     int64               `json:"open"`     // alerts open after this check
	Duration time.Duration       `json:"duration"` // of the registry's transaction
}

// Summary is the one line the Temporal UI and the CLI show for a check:
// "offline 12 · unhealthy 3 · opened 2 · resolved 5 · open 17". Problem kinds with no device are left out.
func (r HealthCheckResult) Summary() string {
	var parts []string
	for _, p := range []struct {
		name string
		n    int64
	}{{"offline", r.Problems.Offline}, {"unhealthy", r.Problems.Unhealthy}, {"desired pending", r.Problems.DesiredPending},
		{"firmware noncompliant", r.Problems.FirmwareNoncompliant}, {"credentials expiring", r.Problems.CredentialExpiring}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", p.name, numfmt.Thousands(p.n)))
		}
	}
	parts = append(parts, "opened "+numfmt.Thousands(r.Opened), "resolved "+numfmt.Thousands(r.Resolved), "open "+numfmt.Thousands(r.Open))
	return strings.Join(parts, " · ")
}

// IsRule reports whether the input names a health rule rather than the fleet-wide check.
func (in HealthCheckInput) IsRule() bool { return in.Rule != "" && in.Rule != health.FleetRule }

// HealthRuleSaveInput starts HealthRuleSave: the rule's whole definition (fleet.PrepareHealthRule fills in
// its defaults).
type HealthRuleSaveInput struct {
	Rule fleet.HealthRule `json:"rule"`
}

// HealthRuleDeleteInput starts HealthRuleDelete.
type HealthRuleDeleteInput struct {
	Name string `json:"name"`
}

// HealthRuleDeleteResult says whether the rule existed (a retried delete finds it gone).
type HealthRuleDeleteResult struct {
	Deleted bool `json:"deleted"`
}

// HealthRuleSaveIDPrefix and HealthRuleDeleteIDPrefix start the ids of the workflows that write a rule:
// <prefix>-<rule>-<time>.
const (
	HealthRuleSaveIDPrefix   = "healthrule-save"
	HealthRuleDeleteIDPrefix = "healthrule-delete"
)
