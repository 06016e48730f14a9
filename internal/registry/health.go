package registry

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
)

// Alert kinds: the problems a health check finds, as the domain types them. internal/health owns the rules
// and the names.
const (
	AlertOffline              = fleet.AlertOffline              // not connected for longer than the rule allows
	AlertUnhealthy            = fleet.AlertUnhealthy            // reported.health.status is failing
	AlertDesiredPending       = fleet.AlertDesiredPending       // desired not acknowledged in reported within the limit
	AlertFirmwareNoncompliant = fleet.AlertFirmwareNoncompliant // not on the version of the latest completed rollout that targets it
	AlertCredentialExpiring   = fleet.AlertCredentialExpiring   // credential_expires_at is near
)

// AlertKinds lists the kinds in a stable order (internal/health's), for reports.
func AlertKinds() []fleet.AlertKind {
	kinds := health.Kinds()
	out := make([]fleet.AlertKind, len(kinds))
	for i, k := range kinds {
		out[i] = fleet.AlertKind(k)
	}
	return out
}

// Alert states as operators see them (Alert.State).
const (
	AlertStateOpen     = fleet.AlertOpen
	AlertStateAcked    = fleet.AlertAcked
	AlertStateResolved = fleet.AlertResolved
)

// Alert is an alerts row: a problem of one device that opened when a health check first found it and
// resolves when a check no longer does. Acknowledging an alert records who has seen it; it does not close
// it.
type Alert struct {
	ID         int64           `json:"id"`
	Rule       string          `json:"rule"` // the health rule that raised it (health.FleetRule: the fleet-wide check)
	DeviceID   string          `json:"deviceId"`
	Kind       fleet.AlertKind `json:"kind"`
	Detail     string          `json:"detail"`
	FirstSeen  time.Time       `json:"firstSeen"`
	LastSeen   time.Time       `json:"lastSeen"`
	ResolvedAt *time.Time      `json:"resolvedAt,omitempty"`
	AckedAt    *time.Time      `json:"ackedAt,omitempty"`
	AckedBy    string          `json:"ackedBy,omitempty"`
}

// State is resolved once the problem is gone, else acked once someone acknowledged it, else open.
func (a Alert) State() fleet.AlertState {
	switch {
	case a.ResolvedAt != nil:
		return AlertStateResolved
	case a.AckedAt != nil:
		return AlertStateAcked
	}
	return AlertStateOpen
}

// AlertFilter selects alerts for ListAlerts.
type AlertFilter struct {
	Open     bool   // only alerts not resolved (open or acked)
	DeviceID string // only this device's alerts ("" = all)
	Rule     string // only this health rule's alerts ("" = all)
	Limit    int    // at most this many, newest first (<= 0 = all)
}
