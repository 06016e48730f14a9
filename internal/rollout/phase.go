package rollout

import (
	"fmt"
	"strings"
	"time"
)

// Phase is where one device stands in a rollout. The values are stored and shown to operators, so they
// are stable lower_snake strings.
type Phase string

// The phases, in the order a device goes through them; Phases returns them in this order.
const (
	Queued         Phase = "queued"          // claimed by the rollout, its wave has not started
	Skipped        Phase = "skipped"         // excluded when its wave started (already on the version, or not active)
	Dispatched     Phase = "dispatched"      // desired.firmware set, no progress yet
	Downloading    Phase = "downloading"     // the device reported it is downloading the image
	Installing     Phase = "installing"      // the device reported it is writing the image
	Rebooting      Phase = "rebooting"       // the device reported it is rebooting into the new version
	Baking         Phase = "baking"          // runs the new version, being watched for the bake time
	Succeeded      Phase = "succeeded"       // stayed healthy on the new version for the bake time
	Failed         Phase = "failed"          // reported failure, timed out, or was unhealthy during the bake
	RollingBack    Phase = "rolling_back"    // sent back to its previous version after the rollout stopped
	RolledBack     Phase = "rolled_back"     // runs its previous version again
	RollbackFailed Phase = "rollback_failed" // could not be returned to its previous version
	Cancelled      Phase = "cancelled"       // never dispatched because the rollout stopped
	// OutsideWindow: never dispatched because the device's maintenance window did not open before the
	// rollout's deadline (docs/architecture.md, "Maintenance windows"); the reason names the window, the
	// deadline and the next opening.
	OutsideWindow Phase = "outside_window"
)

// Phases returns every phase in declaration order, so that tables and summaries list them in a stable
// order instead of ranging over a map.
func Phases() []Phase {
	return []Phase{
		Queued, Skipped, Dispatched, Downloading, Installing, Rebooting, Baking,
		Succeeded, Failed, RollingBack, RolledBack, RollbackFailed, Cancelled, OutsideWindow,
	}
}

// Terminal reports whether the forward rollout is done with the device: Skipped, Succeeded, Failed,
// RolledBack, RollbackFailed, Cancelled or OutsideWindow. A wave is finished when all its devices are terminal (or, for
// Failed ones, being rolled back).
func (p Phase) Terminal() bool {
	switch p {
	case Skipped, Succeeded, Failed, RolledBack, RollbackFailed, Cancelled, OutsideWindow:
		return true
	}
	return false
}

// Touched reports whether the device was sent the new firmware, i.e. every phase except Queued, Skipped,
// Cancelled and OutsideWindow. Only touched devices need a rollback, and only they count as dispatched for a percent
// failure threshold. An unknown phase is not touched.
func (p Phase) Touched() bool {
	switch p {
	case Dispatched, Downloading, Installing, Rebooting, Baking, Succeeded, Failed,
		RollingBack, RolledBack, RollbackFailed:
		return true
	}
	return false
}

// DefaultSilenceLimit is how long a baking device may be offline before it counts as unhealthy when the
// policy does not say: long enough for a reconnect after a network blip, short enough that a device that
// crashed on the new firmware fails within the bake.
const DefaultSilenceLimit = 2 * time.Minute

// Policy is what Evaluate judges a device against.
type Policy struct {
	Version       string        // the firmware being rolled out
	Bake          time.Duration // how long a device must stay healthy on Version (0 = succeed at once)
	DeviceTimeout time.Duration // dispatch -> running Version, else failed (0 = no limit)
	SilenceLimit  time.Duration // during the bake, offline for longer than this = unhealthy (0 = DefaultSilenceLimit)
}

// Observation is what the workflow knows about one device when it evaluates it: its current phase and
// timestamps (kept in workflow state) plus the device's latest job status and reported twin properties.
type Observation struct {
	Phase           Phase
	DispatchedAt    time.Time // when desired.firmware was set; zero means unknown and never times out
	BakeSince       time.Time // zero until first seen running Version
	JobStatus       string    // last status on jobs/{jobId}/status for this rollout's job: "", downloading, installing, rebooting, succeeded, failed
	JobReason       string    // the reason the device gave with JobStatus, if any
	ReportedVersion string    // reported.firmware.version
	Health          string    // reported.health.status: "", "ok", "failing" (anything not "failing"/"unhealthy"/"critical" is healthy)
	HealthReason    string    // reported.health.reason
	Online          bool      // connected to the gateway now
	LastSeen        time.Time // last connection or report; zero means unknown
}

// Decision is the outcome of an evaluation: the device's new phase, why (for Failed, Succeeded, RolledBack
// and RollbackFailed; empty while the device is still moving, so that a caller comparing decisions sees a
// change only when the phase changes), and BakeSince to carry into the next Observation.
type Decision struct {
	Phase     Phase
	Reason    string
	BakeSince time.Time
}

// Evaluate decides a device's forward-rollout phase from what it reports. now is passed in (workflow.Now in
// the workflow) so that the decision is deterministic under replay. The rules, in order:
//
//  1. Terminal phases and Queued, Skipped, Cancelled, OutsideWindow and RollingBack are returned unchanged: they are
//     decided by the workflow (or by EvaluateRollback), not by what the device reports.
//  2. The job reported failed → Failed, whatever the device runs.
//  3. The device runs Version: unhealthy → Failed; otherwise the bake starts now if it has not; with no
//     bake → Succeeded; offline for longer than the silence limit → Failed; baked for Bake or longer →
//     Succeeded; else Baking.
//  4. The device was seen on Version before (BakeSince is set) but now reports another version → Failed:
//     it fell back to another image (e.g. an A/B boot fallback), which no amount of waiting will fix.
//  5. More than DeviceTimeout since dispatch → Failed.
//  6. Otherwise the phase follows the job status; a job that reported success while the device does not yet
//     report Version is still Rebooting.
func Evaluate(o Observation, p Policy, now time.Time) Decision {
	switch o.Phase {
	case Queued, Skipped, Cancelled, OutsideWindow, RollingBack, Succeeded, Failed, RolledBack, RollbackFailed:
		return Decision{Phase: o.Phase, BakeSince: o.BakeSince}
	}
	job := strings.ToLower(strings.TrimSpace(o.JobStatus))
	if job == "failed" {
		return Decision{Phase: Failed, Reason: "device reported failure: " + orNoReason(o.JobReason), BakeSince: o.BakeSince}
	}
	if p.Version != "" && o.ReportedVersion == p.Version {
		return evaluateOnVersion(o, p, now)
	}
	if !o.BakeSince.IsZero() && o.ReportedVersion != "" {
		return Decision{Phase: Failed, BakeSince: o.BakeSince,
			Reason: fmt.Sprintf("left %s during the bake: now reports %s", p.Version, o.ReportedVersion)}
	}
	if p.DeviceTimeout > 0 && !o.DispatchedAt.IsZero() && now.Sub(o.DispatchedAt) > p.DeviceTimeout {
		return Decision{Phase: Failed, BakeSince: o.BakeSince,
			Reason: fmt.Sprintf("did not finish within %s (%s)", p.DeviceTimeout, lastStatus(job, o.ReportedVersion))}
	}
	phase := Dispatched
	switch job {
	case "downloading":
		phase = Downloading
	case "installing":
		phase = Installing
	case "rebooting", "succeeded":
		phase = Rebooting
	}
	return Decision{Phase: phase, BakeSince: o.BakeSince}
}

// evaluateOnVersion is rule 3 of Evaluate: the device runs the new version and is being baked.
func evaluateOnVersion(o Observation, p Policy, now time.Time) Decision {
	if unhealthy(o.Health) {
		why := strings.TrimSpace(o.HealthReason)
		if why == "" {
			why = fmt.Sprintf("health status %q, no reason given", strings.TrimSpace(o.Health))
		}
		return Decision{Phase: Failed, Reason: fmt.Sprintf("unhealthy on %s: %s", p.Version, why), BakeSince: o.BakeSince}
	}
	since := o.BakeSince
	if since.IsZero() {
		since = now
	}
	if p.Bake <= 0 {
		return Decision{Phase: Succeeded, Reason: "running " + p.Version, BakeSince: since}
	}
	limit := p.SilenceLimit
	if limit <= 0 {
		limit = DefaultSilenceLimit
	}
	if !o.Online {
		// With no last-seen time, the bake start is the last moment the device is known to have been up.
		seen := o.LastSeen
		if seen.IsZero() {
			seen = since
		}
		if gone := now.Sub(seen); gone > limit {
			return Decision{Phase: Failed, BakeSince: since,
				Reason: fmt.Sprintf("stopped reporting during the bake (last seen %s ago)", gone.Round(time.Second))}
		}
	}
	if now.Sub(since) >= p.Bake {
		return Decision{Phase: Succeeded, Reason: fmt.Sprintf("healthy on %s for the %s bake", p.Version, p.Bake), BakeSince: since}
	}
	return Decision{Phase: Baking, BakeSince: since}
}

// unhealthy reads reported.health.status. Only the explicit bad states count: a device that reports no
// health at all must not fail a rollout, since most firmware has no health reporting.
func unhealthy(status string) bool {
	switch strings.ToLower(strings.TrimSpace(status)) {
	case "failing", "unhealthy", "critical":
		return true
	}
	return false
}

// lastStatus describes how far a timed-out device got, for the Failed reason.
func lastStatus(job, reported string) string {
	switch {
	case job == "":
		return "no progress reported"
	case job == "succeeded" && reported != "":
		return "the job reported success but the device still reports " + reported
	case job == "succeeded":
		return "the job reported success but the device reports no version"
	}
	return "last status: " + job
}

func orNoReason(s string) string {
	if s = strings.TrimSpace(s); s == "" {
		return "no reason given"
	}
	return s
}

// RollbackObservation is what the workflow knows about a device it is rolling back.
type RollbackObservation struct {
	PrevVersion     string    // the version the device ran before the rollout; "" if it never reported one
	ReportedVersion string    // reported.firmware.version now
	JobStatus       string    // last status of the rollback job
	JobReason       string    // the reason the device gave with JobStatus, if any
	StartedAt       time.Time // when the rollback was dispatched; zero means unknown and never times out
}

// EvaluateRollback decides a rolling-back device's phase. In order: PrevVersion "" (the device never
// reported a version, so there is nothing known to return to) → RolledBack at once with reason
// "no previous version known; left as is"; ReportedVersion == PrevVersion → RolledBack; the job reported
// failed → RollbackFailed; more than timeout (when > 0) since StartedAt → RollbackFailed; else RollingBack.
// The version check comes before the job status because a device that is back on its old version is
// rolled back, whatever its job said.
func EvaluateRollback(o RollbackObservation, timeout time.Duration, now time.Time) Decision {
	switch {
	case o.PrevVersion == "":
		return Decision{Phase: RolledBack, Reason: "no previous version known; left as is"}
	case o.ReportedVersion == o.PrevVersion:
		return Decision{Phase: RolledBack, Reason: "back on " + o.PrevVersion}
	case strings.EqualFold(strings.TrimSpace(o.JobStatus), "failed"):
		return Decision{Phase: RollbackFailed, Reason: "device reported failure: " + orNoReason(o.JobReason)}
	case timeout > 0 && !o.StartedAt.IsZero() && now.Sub(o.StartedAt) > timeout:
		return Decision{Phase: RollbackFailed, Reason: fmt.Sprintf("did not return to %s within %s", o.PrevVersion, timeout)}
	}
	return Decision{Phase: RollingBack}
}
