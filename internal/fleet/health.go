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
	// Rule is the health rule the check applied (health.FleetRule for the fleet-wide check) and Target its
	// target query ("" for the whole fleet).
	Rule     string           `json:"rule,omitempty"`
	Target   string           `json:"target,omitempty"`
	At       time.Time        `json:"at"`
	Devices  int64            `json:"devices"` // not retired (of the rule's targets)
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

// HealthRule is a named health check with its own target, limits and schedule (docs/architecture.md,
// "Health rules"). The fleet-wide check is the rule health.FleetRule, which has no row: its limits travel
// in the schedule's input, as before rules existed.
type HealthRule struct {
	Name string `json:"name"`
	// Query selects the devices the rule checks; a rule given a group has the group's query
	// (GroupQuery), resolved at every check, so that the group's membership is always current.
	Query string `json:"query"`
	// Group is the group the rule was given with --group ("" for a query), for display.
	Group     string        `json:"group,omitempty"`
	Rules     health.Rules  `json:"rules"`
	Every     time.Duration `json:"every"`
	CreatedAt time.Time     `json:"createdAt"`
	UpdatedAt time.Time     `json:"updatedAt"`
}

// ErrHealthRuleNotFound is returned (wrapped) for a rule name with no rule.
var ErrHealthRuleNotFound = errors.New("no such health rule")

// ValidateHealthRuleName checks a rule's name: group-name syntax (it is part of a schedule and workflow id),
// and not the fleet-wide check's.
func ValidateHealthRuleName(name string) error {
	if name == health.FleetRule {
		return fmt.Errorf("rule name %q is the fleet-wide check's (fleetflow health schedule); choose another", name)
	}
	if err := ValidateGroupName(name); err != nil {
		return fmt.Errorf("rule name %q: use 1-64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// PrepareHealthRule fills in a rule's default limits and refuses what no store may save.
func PrepareHealthRule(r HealthRule) (HealthRule, error) {
	if err := ValidateHealthRuleName(r.Name); err != nil {
		return r, err
	}
	if r.Query == "" {
		return r, fmt.Errorf("health rule %s: a target query or group is required", r.Name)
	}
	r.Rules = r.Rules.WithDefaults()
	if err := r.Rules.Validate(); err != nil {
		return r, fmt.Errorf("health rule %s: %w", r.Name, err)
	}
	if r.Every <= 0 {
		return r, fmt.Errorf("health rule %s: a period (--every) is required", r.Name)
	}
	return r, nil
}

// HealthRuleStore is what the health rules' activities need from the registry: the rule's definition is
// written by a workflow (the CLI only reads and starts), and each check of a rule reads it again.
type HealthRuleStore interface {
	// SaveHealthRule creates or replaces a rule; its query must compile (with the groups it names, which it
	// then uses: a group a rule uses is not deleted).
	SaveHealthRule(ctx context.Context, r HealthRule) error
	// DeleteHealthRule deletes a rule and resolves its open alerts (no check will look at them again); a
	// rule that does not exist is ErrHealthRuleNotFound, wrapped.
	DeleteHealthRule(ctx context.Context, name string) error
	// RunHealthRule is RunHealthCheck over the rule's targets with its limits, its alerts its own.
	RunHealthRule(ctx context.Context, runID, name string) (HealthSummary, error)
}
