package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/rollout"
)

// Firmware is a catalogue entry: what a device needs to fetch and verify an image.
type Firmware struct {
	Version   string    `json:"version"`
	URL       string    `json:"url"`
	SHA256    string    `json:"sha256"`
	Notes     string    `json:"notes,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

var (
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks an entry before it is stored: a version that fits in a job id and a topic, an absolute
// http(s) URL, and a SHA-256 in hex, since a device verifies the image against it.
func (f *Firmware) Validate() error {
	f.SHA256 = strings.ToLower(strings.TrimSpace(f.SHA256))
	switch {
	case !versionRE.MatchString(f.Version):
		return fmt.Errorf("firmware version %q: use 1-48 characters from A-Z a-z 0-9 . _ - (e.g. 2.1.0), since it becomes part of job ids and topics", f.Version)
	case !sha256RE.MatchString(f.SHA256):
		return fmt.Errorf("firmware %s: --sha256 must be 64 hex digits, got %d characters", f.Version, len(f.SHA256))
	}
	u, err := url.Parse(f.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("firmware %s: --url %q must be an absolute http(s) URL", f.Version, f.URL)
	}
	if len(f.Notes) > 4096 {
		return fmt.Errorf("firmware %s: notes are limited to 4096 bytes", f.Version)
	}
	return nil
}

// ErrUnknownFirmware is returned (wrapped) for a version the catalogue does not hold.
var ErrUnknownFirmware = errors.New("unknown firmware")

// RolloutConflictError refuses a rollout whose targets are claimed by another running rollout: two rollouts
// never drive the same device.
type RolloutConflictError struct {
	Rollout string `json:"rollout"` // the other rollout (the one holding most of the devices)
	Devices int64  `json:"devices"` // how many of the targeted devices it holds
}

// Error names the other rollout and what the operator can do about it.
func (e *RolloutConflictError) Error() string {
	return fmt.Sprintf("%d of the targeted devices belong to rollout %s, which is still running; wait for it to finish or abort it (fleetflow rollout abort %s)",
		e.Devices, e.Rollout, e.Rollout)
}

// NewRollout describes a rollout to create: the firmware version, the twin query selecting its devices and
// its spec (waves, thresholds; for operators reading the rollouts table).
type NewRollout struct {
	ID      string
	Version string
	Query   string
	Spec    json.RawMessage
}

// RolloutEnd is the state a rollout ends in (rollouts.state once finished).
type RolloutEnd string

// Rollout end states.
const (
	RolloutCompleted  RolloutEnd = "completed"
	RolloutRolledBack RolloutEnd = "rolled_back"
	RolloutAborted    RolloutEnd = "aborted"
	// RolloutNotStarted: the rollout was created but its workflow never started. Only rows from CLIs that
	// created rollouts themselves (before the workflow's RolloutCreate step) can have it.
	RolloutNotStarted RolloutEnd = "not_started"
)

// RolloutObservation is what the registry knows about one device of a rollout, for the rules in
// internal/rollout.
type RolloutObservation struct {
	Rank            int64
	DeviceID        string
	Wave            int
	Phase           rollout.Phase
	PrevVersion     string
	DispatchedAt    time.Time
	BakeSince       time.Time
	RollbackAt      time.Time
	JobStatus       string
	JobReason       string
	ReportedVersion string
	Health          string
	HealthReason    string
	Online          bool
	LastSeen        time.Time
}

// PhaseUpdate changes one device's phase in a rollout.
type PhaseUpdate struct {
	Rank      int64
	Phase     rollout.Phase
	Reason    string    // empty on a rollback phase: the forward reason is kept
	BakeSince time.Time // zero: unchanged
}

// PhaseCount is the number of a rollout's devices in one phase of one wave (Wave -1: not in a wave yet).
type PhaseCount struct {
	Wave  int           `json:"wave"`
	Phase rollout.Phase `json:"phase"`
	N     int64         `json:"n"`
}

// RolloutDevice is one device of a rollout, for reports.
type RolloutDevice struct {
	DeviceID    string        `json:"deviceId"`
	Wave        int           `json:"wave"`
	Phase       rollout.Phase `json:"phase"`
	PrevVersion string        `json:"previousVersion,omitempty"`
	Reason      string        `json:"reason,omitempty"`
	UpdatedAt   time.Time     `json:"updatedAt"`
}

// WaveDecider classifies one queued device of a wave dispatched under maintenance windows, from the values of
// its window tags (docs/architecture.md, "Maintenance windows"): dispatch it now, record it in the wave with
// phase (outside_window, failed) and reason, or neither — it stays queued, its window opens later.
type WaveDecider func(deviceID string, tags map[string]string) (dispatch bool, phase rollout.Phase, reason string)

// WaveChunk is one chunk of a wave dispatched under maintenance windows.
type WaveChunk struct {
	Pushes  []DesiredPush
	Skipped int64 // already on the version, or no longer active
	Last    int64 // the last rank examined: the next chunk starts after it
	More    bool  // queued devices of the wave ranked after Last remain
}

// RolloutStore is what a rollout's activities need from the registry.
type RolloutStore interface {
	// CreateRollout records the rollout and claims its devices — the active devices the query selects that
	// do not run the version yet, each with a stable pseudo-random rank — in one transaction, and returns how
	// many it claimed. It is idempotent: a rollout that exists already is left as it is and its total
	// returned. It fails with ErrUnknownFirmware, ErrEmptyTarget or a *RolloutConflictError (another running
	// rollout holds some of the devices), leaving nothing behind.
	CreateRollout(ctx context.Context, ro NewRollout) (int64, error)
	// DispatchWave moves up to limit queued devices ranked below cutoff into wave: it writes the firmware to
	// their desired state and returns the pushes to send, how many it skipped (unknown, retired or already
	// on the version) and whether more remain. A retry continues with the devices still queued.
	DispatchWave(ctx context.Context, rollout string, wave int, cutoff int64, fw Firmware, limit int) (pushes []DesiredPush, skipped int64, more bool, err error)
	// DispatchWaveWindowed is DispatchWave under maintenance windows: of up to limit queued devices ranked
	// in (after, cutoff), those already on the version or no longer active are skipped, and decide classifies
	// the others from the values of their tags named by tagNames. Devices it dispatches are written as
	// DispatchWave writes them, devices it gives a phase are recorded in wave with their reason, and the rest
	// stay queued. The write of a chunk is one transaction.
	DispatchWaveWindowed(ctx context.Context, rollout string, wave int, after, cutoff int64, fw Firmware, limit int,
		tagNames []string, decide WaveDecider) (WaveChunk, error)
	// ObserveRollout returns the rollout's devices in phases with what they report under job.
	ObserveRollout(ctx context.Context, rollout, job string, phases []rollout.Phase) ([]RolloutObservation, error)
	// UpdateRolloutPhases records phase changes.
	UpdateRolloutPhases(ctx context.Context, rollout string, ups []PhaseUpdate) error
	// RolloutCounts counts the rollout's devices per wave and phase.
	RolloutCounts(ctx context.Context, rollout string) ([]PhaseCount, error)
	// StartRollback sends up to limit touched devices back to their previous firmware under job and returns
	// the pushes and whether more remain.
	StartRollback(ctx context.Context, rollout, job string, limit int) (pushes []DesiredPush, more bool, err error)
	// FinishRollout records the rollout's end state and result, and releases its claims.
	FinishRollout(ctx context.Context, id string, state RolloutEnd, result json.RawMessage) error
	// DesiredDocs returns each known device's whole desired document and version (unknown ids left out).
	DesiredDocs(ctx context.Context, ids []string) ([]DesiredPush, error)
	// RolloutDevices lists the rollout's devices in phases (all when none), in rank order, at most limit.
	RolloutDevices(ctx context.Context, rollout string, phases []rollout.Phase, limit int) ([]RolloutDevice, error)
}
