package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// Target names the devices an operation selects: a twin query, or a device group (whose membership the
// registry resolves to a query). Exactly one is set. It is the one place that knows both forms, so that an
// operation taking a Target accepts `--group G` wherever it accepts `--query Q`.
type Target struct {
	Query string `json:"query,omitempty"`
	Group string `json:"group,omitempty"`
}

// String is the target as an operator wrote it.
func (t Target) String() string {
	if t.Group != "" {
		return "group " + t.Group
	}
	return t.Query
}

// Validate checks that exactly one form is set.
func (t Target) Validate() error {
	switch {
	case t.Query == "" && t.Group == "":
		return errors.New("a target is required: a query (--target) or a group (--group)")
	case t.Query != "" && t.Group != "":
		return errors.New("give a query (--target) or a group (--group), not both")
	}
	return nil
}

// ErrUnknownGroup: a target names a device group the registry does not have.
var ErrUnknownGroup = errors.New("unknown device group")

// ConfigState is where a declarative configuration stands (configurations.state).
type ConfigState string

// Configuration states. A deleted configuration has no row: deleting removes it and leaves devices as
// they are.
const (
	ConfigActive ConfigState = "active"
	ConfigPaused ConfigState = "paused"
)

// ConfigDeviceState is where a configuration stands on one device (config_devices.state).
type ConfigDeviceState string

// Per-device states of a configuration.
const (
	// ConfigApplied: the keys the configuration owns on the device are written to its desired properties,
	// not acknowledged yet.
	ConfigApplied ConfigDeviceState = "applied"
	// ConfigAcked: the device reports every key the configuration owns as desired holds it (tags
	// configurations, which devices never see, are acknowledged when written).
	ConfigAcked ConfigDeviceState = "acked"
	// ConfigFailed: the registry refused the write (a limit, a retired device).
	ConfigFailed ConfigDeviceState = "failed"
	// ConfigSuperseded: configurations that outrank this one own every key it sets on the device.
	ConfigSuperseded ConfigDeviceState = "superseded"
)

// ConfigMetric is a custom metric of a configuration: the number of targeted devices its query selects.
type ConfigMetric struct {
	Name  string `json:"name"`
	Query string `json:"query"`
}

// ConfigSpec is a declarative configuration: a merge patch of desired properties or tags kept applied to
// every device its target selects, now and later, with Priority deciding per key where configurations
// overlap (docs/architecture.md, "Declarative configurations").
type ConfigSpec struct {
	Name     string          `json:"name"`
	Target   Target          `json:"target"`
	Priority int             `json:"priority"`
	Section  twin.Section    `json:"section"`
	Patch    json.RawMessage `json:"patch"`
	Metrics  []ConfigMetric  `json:"metrics,omitempty"`
}

var configName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// MaxConfigPriority bounds priorities (either sign) so that they stay readable and fit any integer column.
const MaxConfigPriority = 1_000_000

// ErrInvalidConfig is wrapped by every error of ConfigSpec.Validate and CheckShape: a spec no retry can fix.
var ErrInvalidConfig = errors.New("invalid configuration")

// CheckShape checks the spec without decoding the patch: the name, the target's form, the priority, the
// section, that the patch is a non-empty JSON object as written, and the metrics' names. It is what workflow
// code may call (it reads no map in an order that could differ between runs); Validate checks the rest.
func (s ConfigSpec) CheckShape() error {
	if !configName.MatchString(s.Name) {
		return fmt.Errorf("%w: configuration name %q: want 1-63 characters of a-z 0-9 . _ -, starting with a letter or digit", ErrInvalidConfig, s.Name)
	}
	if err := s.Target.Validate(); err != nil {
		return fmt.Errorf("%w: configuration %s: %w", ErrInvalidConfig, s.Name, err)
	}
	if s.Priority < -MaxConfigPriority || s.Priority > MaxConfigPriority {
		return fmt.Errorf("%w: configuration %s: priority %d out of range ±%d", ErrInvalidConfig, s.Name, s.Priority, MaxConfigPriority)
	}
	if s.Section != twin.Desired && s.Section != twin.Tags {
		return fmt.Errorf("%w: configuration %s: section %q: want desired or tags", ErrInvalidConfig, s.Name, s.Section)
	}
	p := strings.TrimSpace(string(s.Patch))
	if len(p) < 2 || p[0] != '{' || p[len(p)-1] != '}' {
		return fmt.Errorf("%w: configuration %s: the patch must be a JSON object", ErrInvalidConfig, s.Name)
	}
	if strings.TrimSpace(p[1:len(p)-1]) == "" {
		return fmt.Errorf("%w: configuration %s: the patch sets nothing", ErrInvalidConfig, s.Name)
	}
	for i, m := range s.Metrics {
		if !configName.MatchString(m.Name) {
			return fmt.Errorf("%w: configuration %s: metric name %q: want a-z 0-9 . _ -", ErrInvalidConfig, s.Name, m.Name)
		}
		for _, o := range s.Metrics[:i] {
			if o.Name == m.Name {
				return fmt.Errorf("%w: configuration %s: metric %s given twice", ErrInvalidConfig, s.Name, m.Name)
			}
		}
		if strings.TrimSpace(m.Query) == "" {
			return fmt.Errorf("%w: configuration %s: metric %s has no query", ErrInvalidConfig, s.Name, m.Name)
		}
	}
	return nil
}

// Validate checks what can be checked without the registry: CheckShape, and the patch decoded (valid JSON
// within the section's limits). Target and metric queries are compiled by the registry.
func (s ConfigSpec) Validate() error {
	if err := s.CheckShape(); err != nil {
		return err
	}
	if _, err := twin.ParseObject(s.Section, s.Patch); err != nil {
		return fmt.Errorf("%w: configuration %s: patch: %w", ErrInvalidConfig, s.Name, err)
	}
	return nil
}

// Keys are the top-level keys the patch sets (or deletes), sorted: the unit in which overlapping
// configurations compete.
func (s ConfigSpec) Keys() ([]string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(s.Patch, &obj); err != nil {
		return nil, fmt.Errorf("configuration %s: patch: %w", s.Name, err)
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// SubPatch is the part of patch that sets keys (top-level), in a stable encoding.
func SubPatch(patch json.RawMessage, keys []string) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(patch, &obj); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	sub := make(map[string]json.RawMessage, len(keys))
	for _, k := range keys {
		if v, ok := obj[k]; ok {
			sub[k] = v
		}
	}
	return json.Marshal(sub) // map keys are sorted by encoding/json
}

// ConfigRank orders overlapping configurations: the higher priority wins a key, and between equal
// priorities the name that sorts first, so that the winner never depends on which reconciled first.
type ConfigRank struct {
	Name     string
	Priority int
}

// Outranks reports whether r wins a key that both r and o set on a device.
func (r ConfigRank) Outranks(o ConfigRank) bool {
	if r.Priority != o.Priority {
		return r.Priority > o.Priority
	}
	return r.Name < o.Name
}

// ConfigMetricCount is a custom metric's value.
type ConfigMetricCount struct {
	Name  string `json:"name"`
	Count int64  `json:"count"`
}

// ConfigCounts are a configuration's devices: those its target selects now, and of these the ones it is
// applied to at its current version (acknowledged or not), acknowledged, failed, and superseded (every key
// owned by higher-ranked configurations); plus the custom metrics among the targeted devices.
type ConfigCounts struct {
	Targeted   int64               `json:"targeted"`
	Applied    int64               `json:"applied"`
	Acked      int64               `json:"acknowledged"`
	Failed     int64               `json:"failed"`
	Superseded int64               `json:"superseded"`
	Metrics    []ConfigMetricCount `json:"metrics,omitempty"`
}

// ConfigConflict is one key that two configurations set on the same devices, and who wins it there.
type ConfigConflict struct {
	Key     string `json:"key"`
	Other   string `json:"other"`
	OtherPr int    `json:"otherPriority"`
	Devices int64  `json:"devices"` // devices both target now
	Winner  string `json:"winner"`
}

// ConfigReconciled is what one reconcile pass did: how many devices behind it handled (written, superseded
// or failed) and the desired patches to push to devices it wrote.
type ConfigReconciled struct {
	Handled int
	Written int
	Pushes  []DesiredPush
}

// ConfigStore is what a configuration's activities need from the registry.
type ConfigStore interface {
	// SaveConfig records the configuration at version in state (insert or update). A version lower than
	// the stored one is ignored (a late retry). When the spec changes, the devices of the configurations
	// that share keys with it are marked for re-evaluation, since who owns a key may have changed.
	SaveConfig(ctx context.Context, spec ConfigSpec, version int64, state ConfigState) error
	// ReconcileConfig handles up to limit devices the configuration targets whose record is behind — never
	// applied, applied at an older version, retagged since, or marked for re-evaluation — in one
	// transaction: it works out which of the configuration's keys each device's higher-ranked
	// configurations leave it, writes those (one twin write per device, its version up by one) and records
	// the device's state with the write, so that a retry never writes a device twice.
	ReconcileConfig(ctx context.Context, name string, limit int) (ConfigReconciled, error)
	// CollectConfigAcks marks applied devices whose reported properties match desired for every key the
	// configuration owns on them as acknowledged, and returns how many applied devices still wait, and how
	// many of those are online.
	CollectConfigAcks(ctx context.Context, name string) (waiting, waitingOnline int64, err error)
	// ConfigRepush returns, as pushes of their whole desired document, up to limit connected devices that
	// were written at least olderThan ago and have not acknowledged, and restarts their clock: a push lost
	// after the write committed (a crash, a dropped message) is sent again while the device stays connected.
	ConfigRepush(ctx context.Context, name string, olderThan time.Duration, limit int) ([]DesiredPush, error)
	// ConfigCounts counts the configuration's devices and metrics as they are now.
	ConfigCounts(ctx context.Context, name string) (ConfigCounts, error)
	// DeleteConfig removes the configuration and its records, leaving devices as they are, and marks the
	// devices of the configurations it outranked for re-evaluation (they may own its keys now).
	DeleteConfig(ctx context.Context, name string) error
}

// DeviceChanges wakes configuration reconcilers early. Each method returns a channel that is closed at the
// next change of its kind after the call. Nil (no feed) means reconcilers only poll.
type DeviceChanges interface {
	// Changed: devices inserted or retagged, configurations saved or deleted — what can leave devices behind
	// a configuration.
	Changed() <-chan struct{}
	// Connected: devices connected or disconnected — what can bring acknowledgements, not devices behind.
	Connected() <-chan struct{}
}
