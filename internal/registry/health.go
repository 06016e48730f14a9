package registry

import "time"

// Alert kinds: the problems a health check finds.
const (
	AlertOffline              = "offline"               // not connected for longer than the rule allows
	AlertUnhealthy            = "unhealthy"             // reported.health.status is failing
	AlertDesiredPending       = "desired_pending"       // desired not acknowledged in reported within the limit
	AlertFirmwareNoncompliant = "firmware_noncompliant" // not on the version of the latest completed rollout that targets it
	AlertCredentialExpiring   = "credential_expiring"   // credential_expires_at is near
)

// AlertKinds lists the kinds in a stable order, for reports.
func AlertKinds() []string {
	return []string{AlertOffline, AlertUnhealthy, AlertDesiredPending, AlertFirmwareNoncompliant, AlertCredentialExpiring}
}

// HealthSummary is the fleet at a glance as one health check saw it; stored in health_runs.summary.
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
}
