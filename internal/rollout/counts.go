package rollout

import (
	"strconv"
	"strings"
	"time"
)

// Counts are devices per phase, returned by workflow queries and shown by the CLI. It is a struct rather
// than a map[Phase]int64 because map iteration order is random, which deterministic workflow code must not
// depend on, and a struct also gives stable JSON. Downloading, Installing and Rebooting share InProgress:
// operators care that a device is on its way, not which step it is on.
type Counts struct {
	Queued         int64 `json:"queued"`
	Skipped        int64 `json:"skipped"`
	Dispatched     int64 `json:"dispatched"`
	InProgress     int64 `json:"inProgress"`
	Baking         int64 `json:"baking"`
	Succeeded      int64 `json:"succeeded"`
	Failed         int64 `json:"failed"`
	RollingBack    int64 `json:"rollingBack"`
	RolledBack     int64 `json:"rolledBack"`
	RollbackFailed int64 `json:"rollbackFailed"`
	Cancelled      int64 `json:"cancelled"`
	// OutsideWindow: devices whose maintenance window did not open before the deadline.
	OutsideWindow int64 `json:"outsideWindow,omitempty"`
}

// Add adds n devices (negative to move them out) to phase p. Downloading, Installing and Rebooting go to
// InProgress. An unknown phase is ignored rather than panicking, so that a workflow replaying state written
// by a newer version does not fail; its devices are simply not counted.
func (c *Counts) Add(p Phase, n int64) {
	if f := c.field(p); f != nil {
		*f += n
	}
}

// field maps a phase to its counter; nil for an unknown phase.
func (c *Counts) field(p Phase) *int64 {
	switch p {
	case Queued:
		return &c.Queued
	case Skipped:
		return &c.Skipped
	case Dispatched:
		return &c.Dispatched
	case Downloading, Installing, Rebooting:
		return &c.InProgress
	case Baking:
		return &c.Baking
	case Succeeded:
		return &c.Succeeded
	case Failed:
		return &c.Failed
	case RollingBack:
		return &c.RollingBack
	case RolledBack:
		return &c.RolledBack
	case RollbackFailed:
		return &c.RollbackFailed
	case Cancelled:
		return &c.Cancelled
	case OutsideWindow:
		return &c.OutsideWindow
	}
	return nil
}

// Touched is the number of devices sent the new firmware (see Phase.Touched): the "dispatched" a percent
// Threshold is measured against, and the devices a rollback has to consider.
func (c Counts) Touched() int64 {
	return c.Dispatched + c.InProgress + c.Baking + c.Succeeded + c.Failed + c.RollingBack + c.RolledBack + c.RollbackFailed
}

// Pending is the number of devices still moving forward whose outcome is not decided yet
// (Dispatched+InProgress+Baking); a wave is over when none is pending.
func (c Counts) Pending() int64 {
	return c.Dispatched + c.InProgress + c.Baking
}

// Total is the number of devices in all phases: the rollout's target set once every device is claimed.
func (c Counts) Total() int64 {
	return c.Queued + c.Skipped + c.Touched() + c.Cancelled + c.OutsideWindow
}

// String is a compact summary for logs and the CLI, such as "3 succeeded, 1 failed, 12 in progress". Only
// non-zero counts are listed, outcomes first, in a fixed order so the same counts always read the same;
// all-zero counts are "no devices".
func (c Counts) String() string {
	parts := []struct {
		n     int64
		label string
	}{
		{c.Succeeded, "succeeded"},
		{c.Failed, "failed"},
		{c.RolledBack, "rolled back"},
		{c.RollbackFailed, "rollback failed"},
		{c.RollingBack, "rolling back"},
		{c.Baking, "baking"},
		{c.InProgress, "in progress"},
		{c.Dispatched, "dispatched"},
		{c.Queued, "queued"},
		{c.Skipped, "skipped"},
		{c.Cancelled, "cancelled"},
		{c.OutsideWindow, "outside their window"},
	}
	var b strings.Builder
	for _, p := range parts {
		if p.n == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(p.n, 10))
		b.WriteByte(' ')
		b.WriteString(p.label)
	}
	if b.Len() == 0 {
		return "no devices"
	}
	return b.String()
}

// Estimate is how long a rollout should take, to show an operator before it starts: for each non-empty wave
// (one whose cutoff is above the previous one; Cutoffs keeps empty waves, the workflow skips them),
// typicalInstall + bake, since a wave's devices install and bake in parallel and the next wave starts when
// they are done. Waits for approval between waves (approveEach) are not included: they depend on a person,
// so the estimate is the time the rollout itself needs. Device timeouts are ignored too: the estimate is
// for a rollout that goes well.
func Estimate(cutoffs []int64, bake, typicalInstall time.Duration) time.Duration {
	var total time.Duration
	var prev int64
	for _, c := range cutoffs {
		if c > prev {
			total += typicalInstall + bake
			prev = c
		}
	}
	return total
}
