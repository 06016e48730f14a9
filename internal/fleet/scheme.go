package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// SchemeVersion is one version of the metadata scheme (docs/architecture.md, "Metadata scheme"): the JSON
// Schema of tags and optionally of reported properties. Every `scheme set` makes a new one; the newest
// active version is the scheme in force.
type SchemeVersion struct {
	Version         int64           `json:"version"`
	Tags            json.RawMessage `json:"tags"`
	Reported        json.RawMessage `json:"reported,omitempty"`
	State           SchemeState     `json:"state"`
	AllowViolations bool            `json:"allowViolations"`
	SetBy           string          `json:"setBy"`
	CreatedAt       time.Time       `json:"createdAt"`
	ActivatedAt     *time.Time      `json:"activatedAt,omitempty"`
}

// SchemeState is where a scheme version stands.
type SchemeState string

// Scheme version states.
const (
	// SchemeCandidate: set, its check of the fleet still running.
	SchemeCandidate SchemeState = "candidate"
	// SchemeActive: in force (the newest active version is the scheme).
	SchemeActive SchemeState = "active"
	// SchemeRefused: the fleet violated it and violations were not allowed.
	SchemeRefused SchemeState = "refused"
)

// ErrNoScheme: no scheme version is active (every tag document is accepted).
var ErrNoScheme = errors.New("no metadata scheme is set")

// SchemeViolation is one way a device's document breaks a scheme.
type SchemeViolation struct {
	Path string `json:"path"`
	Rule string `json:"rule"`
}

// DeviceViolations are a device's violations found by a scheme check.
type DeviceViolations struct {
	DeviceID   string            `json:"deviceId"`
	Violations []SchemeViolation `json:"violations"`
}

// SchemeCheckProgress is how far a scheme check got: the counts of the whole check as the registry holds
// them (exact whichever attempt did a batch) and the last device id checked.
type SchemeCheckProgress struct {
	Checked   int64  `json:"checked"`
	Violating int64  `json:"violating"`
	Cursor    string `json:"cursor"`
	Done      bool   `json:"done"`
}

// SchemeCheckEnd is how a scheme check ended, and what became of the version it checked.
type SchemeCheckEnd struct {
	Version   int64       `json:"version"`
	State     SchemeState `json:"state"`
	Checked   int64       `json:"checked"`
	Violating int64       `json:"violating"`
}

// SchemeStore is what the SchemeCheck workflow's activities need from the registry.
type SchemeStore interface {
	// StageScheme records a new candidate version set by the workflow setBy and returns its number; it is
	// idempotent (a retry finds the version setBy recorded).
	StageScheme(ctx context.Context, setBy string, tags, reported json.RawMessage, allowViolations bool) (int64, error)
	// ActiveSchemeVersion returns the number of the scheme in force, or ErrNoScheme.
	ActiveSchemeVersion(ctx context.Context) (int64, error)
	// StartSchemeCheck records a check of version (idempotent) and drops the per-device violations of all
	// but the newest checks, so that their table stays bounded.
	StartSchemeCheck(ctx context.Context, check string, version int64) error
	// SchemeCheckBatch checks up to limit devices (not retired) with ids after after, in id order, against
	// the check's version and records each violating device. A batch whose range an earlier attempt
	// committed is not counted again: it returns the check's progress as recorded.
	SchemeCheckBatch(ctx context.Context, check, after string, limit int) (SchemeCheckProgress, error)
	// FinishSchemeCheck ends the check. With activate, the version checked becomes active when the fleet
	// satisfies it or its violations are allowed, and refused otherwise. Idempotent.
	FinishSchemeCheck(ctx context.Context, check string, activate bool) (SchemeCheckEnd, error)
}
