// Package health holds the rules of the monitor stage as pure functions: which problems a device has
// (Evaluate) and how a check's findings turn the open alerts into new, refreshed and resolved ones
// (Reconcile).
//
// The registry runs the same rules as set-based SQL over the whole fleet, because a million devices cannot
// be loaded into Go every five minutes; these functions are the specification that its integration tests
// hold the SQL to, and they are tested without any server. The package imports nothing of fleetflow's, so
// the registry, the workflows and the CLI can all depend on it.
package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/numfmt"
)

// Problem kinds, stored as alerts.kind. The registry's Alert* constants are these.
const (
	KindOffline              = "offline"               // not connected for longer than Rules.OfflineAfter
	KindUnhealthy            = "unhealthy"             // reported.health.status is failing, unhealthy or critical
	KindDesiredPending       = "desired_pending"       // desired not acknowledged in reported within Rules.AckWithin
	KindFirmwareNoncompliant = "firmware_noncompliant" // not on the version of the latest completed rollout that selects it
	KindCredentialExpiring   = "credential_expiring"   // credential_expires_at within Rules.ExpiringWithin (or past)
)

// Kinds lists the problem kinds in a stable order, for reports.
func Kinds() []string {
	return []string{KindOffline, KindUnhealthy, KindDesiredPending, KindFirmwareNoncompliant, KindCredentialExpiring}
}

// FailingStatuses are the values of reported.health.status (compared case-insensitively) that make a
// device unhealthy. Anything else, including no status at all, is not a problem: devices that do not
// report health are judged by their connection alone.
var FailingStatuses = []string{"failing", "unhealthy", "critical"}

// Device statuses (the registry's devices.status).
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
	StatusRetired  = "retired"
)

// FleetRule names the fleet-wide check among the health rules (docs/architecture.md, "Health rules"): its
// alerts, and those raised before rules existed, are the rule "fleet"'s.
const FleetRule = "fleet"

// Defaults of Rules: an operator who schedules a check without flags gets these.
const (
	DefaultOfflineAfter   = 10 * time.Minute
	DefaultAckWithin      = 10 * time.Minute
	DefaultExpiringWithin = 7 * 24 * time.Hour
)

// Rules are the limits a health check applies. The zero value of a field means its default (WithDefaults).
type Rules struct {
	// OfflineAfter is how long an active device may be disconnected (since it was last seen, or since it
	// was created when it never connected) before it is offline.
	OfflineAfter time.Duration `json:"offlineAfter"`
	// AckWithin is how long a device has to acknowledge a desired change in its reported properties.
	AckWithin time.Duration `json:"ackWithin"`
	// ExpiringWithin is how long before credential_expires_at a device's credentials count as expiring.
	ExpiringWithin time.Duration `json:"expiringWithin"`
}

// DefaultRules returns the rules with every default.
func DefaultRules() Rules {
	return Rules{OfflineAfter: DefaultOfflineAfter, AckWithin: DefaultAckWithin, ExpiringWithin: DefaultExpiringWithin}
}

// WithDefaults fills zero fields with their defaults; negative fields are left for Validate to refuse.
func (r Rules) WithDefaults() Rules {
	if r.OfflineAfter == 0 {
		r.OfflineAfter = DefaultOfflineAfter
	}
	if r.AckWithin == 0 {
		r.AckWithin = DefaultAckWithin
	}
	if r.ExpiringWithin == 0 {
		r.ExpiringWithin = DefaultExpiringWithin
	}
	return r
}

// Validate refuses rules that cannot mean anything: every limit must be positive.
func (r Rules) Validate() error {
	var errs []error
	for _, f := range []struct {
		flag string
		d    time.Duration
	}{{"--offline-after", r.OfflineAfter}, {"--ack-within", r.AckWithin}, {"--expiring-within", r.ExpiringWithin}} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s %s: must be > 0", f.flag, f.d))
		}
	}
	return errors.Join(errs...)
}

// String renders the rules as an operator would type them.
func (r Rules) String() string {
	return fmt.Sprintf("offline after %s · ack within %s · credentials expiring within %s",
		numfmt.FormatDuration(r.OfflineAfter), numfmt.FormatDuration(r.AckWithin), numfmt.FormatDuration(r.ExpiringWithin))
}

// Device is what the rules read of one device. Desired and Reported are the twin's sections as decoded by
// encoding/json (objects are map[string]any, numbers float64).
type Device struct {
	ID     string
	Status string // active | disabled | retired
	Online bool
	// LastSeen, DesiredAt and CredentialExpiresAt are zero when the column is NULL.
	LastSeen            time.Time
	CreatedAt           time.Time
	DesiredAt           time.Time // when desired last changed; zero when it never changed since creation
	CredentialExpiresAt time.Time
	Desired             map[string]any
	Reported            map[string]any
	// Health and FirmwareVersion are reported.health.status and reported.firmware.version; when empty they
	// are read from Reported.
	Health          string
	FirmwareVersion string
	// CompliantVersion is the firmware version of the latest completed rollout whose query selects the
	// device ("" when none does), and CompliantRollout that rollout's id.
	CompliantVersion string
	CompliantRollout string
}

// Problem is one thing wrong with a device. Detail is for operators and, like the registry's SQL, holds
// absolute times (UTC, to the second) so that it does not change from one check to the next while the
// problem lasts.
type Problem struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// Stamp formats a time as problem details show it: UTC, to the second (the registry's SQL formats the same).
func Stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// Evaluate returns the device's problems at now, in Kinds order. Disabled and retired devices have none, so
// their open alerts resolve: an operator who disabled a device does not want to hear that it is offline.
func Evaluate(d Device, r Rules, now time.Time) []Problem {
	if d.Status != StatusActive {
		return nil
	}
	var out []Problem
	add := func(kind, detail string) { out = append(out, Problem{Kind: kind, Detail: detail}) }

	if !d.Online {
		seen := d.LastSeen
		if seen.IsZero() {
			seen = d.CreatedAt
		}
		if seen.Before(now.Add(-r.OfflineAfter)) {
			if d.LastSeen.IsZero() {
				add(KindOffline, "never connected (created "+Stamp(d.CreatedAt)+")")
			} else {
				add(KindOffline, "last seen "+Stamp(d.LastSeen))
			}
		}
	}

	status, ok := d.Health, d.Health != ""
	if !ok {
		status, ok = jsonText(path(d.Reported, "health", "status"))
	}
	if ok && isFailing(status) {
		add(KindUnhealthy, "health.status is "+status)
	}

	// A device never asked anything since creation was asked at creation.
	asked := d.DesiredAt
	if asked.IsZero() {
		asked = d.CreatedAt
	}
	if asked.Before(now.Add(-r.AckWithin)) {
		if keys := PendingKeys(d.Desired, d.Reported); len(keys) > 0 {
			add(KindDesiredPending, "desired not acknowledged since "+Stamp(asked)+": "+strings.Join(keys, ", "))
		}
	}

	if d.CompliantVersion != "" {
		fw := d.FirmwareVersion
		if fw == "" {
			fw, _ = jsonText(path(d.Reported, "firmware", "version"))
		}
		if fw != d.CompliantVersion {
			shown := fw
			if shown == "" {
				shown = "no reported version"
			}
			add(KindFirmwareNoncompliant, "runs "+shown+"; rollout "+d.CompliantRollout+" installed "+d.CompliantVersion)
		}
	}

	if exp := d.CredentialExpiresAt; !exp.IsZero() && exp.Before(now.Add(r.ExpiringWithin)) {
		if exp.Before(now) {
			add(KindCredentialExpiring, "credentials expired "+Stamp(exp))
		} else {
			add(KindCredentialExpiring, "credentials expire "+Stamp(exp))
		}
	}
	return out
}

func isFailing(status string) bool {
	for _, f := range FailingStatuses {
		if strings.EqualFold(status, f) {
			return true
		}
	}
	return false
}

// PendingKeys returns, sorted by byte order, the top-level desired keys whose value the device has not
// reported back: reported[k] must equal desired[k] as JSON, except for "firmware", where only .version is
// compared (a device reports the version it runs, not the job, URL and digest it was sent).
func PendingKeys(desired, reported map[string]any) []string {
	var keys []string
	for k, dv := range desired {
		if k == "firmware" {
			dver, dok := jsonText(path(desired, "firmware", "version"))
			rver, rok := jsonText(path(reported, "firmware", "version"))
			if dok != rok || dver != rver {
				keys = append(keys, k)
			}
			continue
		}
		rv, ok := reported[k]
		if !ok || !jsonEqual(dv, rv) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// path walks nested objects; nil when a step is missing or not an object (as Postgres' -> gives NULL).
func path(doc map[string]any, keys ...string) any {
	var cur any = doc
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

// jsonText is Postgres' ->> on a decoded value: a string as is, null or missing as absent (false), anything
// else as its JSON text.
func jsonText(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case string:
		return x, true
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprint(x), true
		}
		return string(b), true
	}
}

// jsonEqual is jsonb equality of two decoded values: objects by keys and values, arrays in order, numbers
// by value. Both sides go through encoding/json first, so that a document built in Go (int 30) equals the
// same document decoded from JSON (float64 30).
func jsonEqual(a, b any) bool {
	return reflect.DeepEqual(normalize(a), normalize(b))
}

func normalize(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	if json.Unmarshal(b, &out) != nil {
		return v
	}
	return out
}

// Alert is an open alert as Reconcile sees it: one per device and kind.
type Alert struct {
	ID       int64  `json:"id"`
	DeviceID string `json:"deviceId"`
	Kind     string `json:"kind"`
	Detail   string `json:"detail"`
}

// Finding is a problem of one device.
type Finding struct {
	DeviceID string `json:"deviceId"`
	Problem
}

// Reconcile is what a check does to the open alerts given its findings: a finding without an open alert of
// its device and kind opens one (toOpen); a finding with one refreshes it, its last-seen time and detail
// (toRefresh); an open alert without a finding resolves (toResolve). Duplicate findings count once (the
// first). Each result keeps its input order.
func Reconcile(open []Alert, findings []Finding) (toOpen, toRefresh []Finding, toResolve []Alert) {
	type key struct{ device, kind string }
	isOpen := make(map[key]bool, len(open))
	for _, a := range open {
		isOpen[key{a.DeviceID, a.Kind}] = true
	}
	found := make(map[key]bool, len(findings))
	for _, f := range findings {
		k := key{f.DeviceID, f.Kind}
		if found[k] {
			continue
		}
		found[k] = true
		if isOpen[k] {
			toRefresh = append(toRefresh, f)
		} else {
			toOpen = append(toOpen, f)
		}
	}
	for _, a := range open {
		if !found[key{a.DeviceID, a.Kind}] {
			toResolve = append(toResolve, a)
		}
	}
	return toOpen, toRefresh, toResolve
}
