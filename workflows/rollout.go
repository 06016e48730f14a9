package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/window"
)

// Defaults for RolloutInput.
const (
	DefaultDeviceTimeout       = 10 * time.Minute
	DefaultRolloutPoll         = time.Second
	DefaultObserveFor          = 30 * time.Second
	DefaultContinueAfterEvents = 10000
	// repushAfter is how long an online device may show no progress after its dispatch before the
	// observation sends its desired state again.
	repushAfter = 20 * time.Second
)

// Rollout progress states.
const (
	rolloutDispatching = "dispatching"
	rolloutObserving   = "observing"
	rolloutAwaiting    = searchattr.StateAwaitingApproval
	rolloutPaused      = searchattr.StatePaused
	rolloutRollingBack = searchattr.StateRollingBack
	rolloutDone        = "done"
	// rolloutWaitingForWindow: the next wave waits for the rollout's maintenance window to open.
	rolloutWaitingForWindow = "waiting-for-window"
)

// rolloutRun is one run's view of a rollout: the input, the carried state and what the UI is told.
type rolloutRun struct {
	in       RolloutInput
	st       *RolloutCarry
	cutoffs  []int64
	progress RolloutProgress
	// cancelObserve interrupts a running observation when an operator's update needs the workflow's
	// attention now (abort), instead of after the observation's MaxWait.
	cancelObserve workflow.CancelFunc
	// awaiting is set while the rollout waits for approval, whatever a pause does to the progress state.
	awaiting bool
	// finishing is set once the outcome is being recorded; operator updates no longer apply.
	finishing bool
}

// FirmwareRollout installs a firmware version on the devices claimed for it, wave by wave: each wave's
// devices get desired.firmware, and an observation activity applies the rules of internal/rollout to what
// they report until every device of the wave has succeeded or failed. When failures exceed MaxFailures the
// rollout stops and sends every touched device back to its previous version. pause, resume, approve and
// abort are Workflow Updates; progress is a query; history is bounded by continue-as-new.
func FirmwareRollout(ctx workflow.Context, in RolloutInput) (RolloutResult, error) {
	in = withRolloutDefaults(in)
	// A rollout whose input has a query but no Total yet claims its devices here, as the first step.
	// Inputs recorded before creation moved into the workflow carry Total > 0 and take the old path.
	creating := in.Total == 0 && in.Carry == nil && in.Query != ""
	if in.RolloutID == "" || in.Firmware.Version == "" || (in.Total <= 0 && !creating) || len(in.Waves) == 0 {
		return RolloutResult{}, temporal.NewNonRetryableApplicationError("a rollout id, firmware, waves and a non-empty target set are required",
			ErrTypeInvalidInput, nil)
	}
	if in.Carry == nil {
		in.Carry = &RolloutCarry{Approved: 0}
	}
	r := &rolloutRun{in: in, st: in.Carry, cutoffs: rollout.Cutoffs(in.Waves, in.Total)}
	r.st.Runs++
	waveNames := make([]string, len(in.Waves))
	for i, w := range in.Waves {
		waveNames[i] = w.String()
	}
	r.progress = RolloutProgress{RolloutID: in.RolloutID, Version: in.Firmware.Version, Waves: waveNames,
		Cutoffs: r.cutoffs, Total: in.Total, Counts: r.st.Counts, Decision: r.st.Decision, Runs: r.st.Runs}
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (RolloutProgress, error) { return r.progress, nil }); err != nil {
		return RolloutResult{}, fmt.Errorf("register progress query: %w", err)
	}
	if creating {
		r.report(ctx, RolloutStateCreating)
		if err := r.create(ctx); err != nil {
			return RolloutResult{}, err
		}
	}
	if err := r.registerUpdates(ctx); err != nil {
		return RolloutResult{}, err
	}
	r.report(ctx, r.stateName())

	if !r.st.RollingBack && r.st.Abort == nil {
		for ; r.st.Wave < len(r.cutoffs); r.st.Wave, r.st.Dispatched = r.st.Wave+1, false {
			if r.continueAsNewDue(ctx) {
				return r.continueAsNew(ctx)
			}
			done, err := r.runWave(ctx)
			if err != nil {
				return RolloutResult{}, err
			}
			if !done {
				break // stopped: threshold, abort, or continue-as-new pending
			}
		}
		if r.continueAsNewDue(ctx) && r.st.Wave < len(r.cutoffs) && r.st.Abort == nil && !r.breached() {
			return r.continueAsNew(ctx)
		}
	}

	state := fleet.RolloutCompleted
	switch {
	case r.st.RollingBack || r.breached() || (r.st.Abort != nil && r.st.Abort.Rollback):
		done, err := r.rollback(ctx)
		if err != nil {
			return RolloutResult{}, err
		}
		if !done {
			return r.continueAsNew(ctx)
		}
		state = fleet.RolloutRolledBack
		if r.st.Abort != nil && !r.breached() {
			state = fleet.RolloutAborted
		}
	case r.st.Abort != nil:
		state = fleet.RolloutAborted
	}
	return r.finish(ctx, state)
}

// RolloutStateCreating is the progress state of a rollout that is claiming its devices; the CLI waits until
// the state moves on (or the workflow fails) to tell the operator the total.
const RolloutStateCreating = "creating"

// create is the rollout's first step: RolloutCreate records the rollout and claims its devices,
// idempotently (a retry or a replay finds its own claims). A conflict with another rollout, an empty set or
// an unknown firmware fails the workflow with a non-retryable error whose type the CLI maps to its message.
func (r *rolloutRun) create(ctx workflow.Context) error {
	cctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
		Summary:     "create the rollout and claim its devices"})
	res, err := executeActivity(cctx, Activities.RolloutCreate, RolloutCreateInput{RolloutID: r.in.RolloutID,
		Version: r.in.Firmware.Version, Query: r.in.Query, Spec: r.in.Spec}).Result(ctx)
	if err != nil {
		// Returned as is: the application error's type (RolloutConflict, EmptyTarget, UnknownFirmware) is what
		// the CLI reads.
		return err
	}
	r.in.Total = res.Total
	r.cutoffs = rollout.Cutoffs(r.in.Waves, res.Total)
	r.progress.Total, r.progress.Cutoffs = res.Total, r.cutoffs
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Total.ValueSet(res.Total)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return nil
}

// runWave dispatches and observes the current wave. It returns true when the wave ended well and the next
// one may start, false when the rollout must stop (or continue as new in the middle of the wave).
func (r *rolloutRun) runWave(ctx workflow.Context) (bool, error) {
	w := r.st.Wave
	prev := int64(0)
	if w > 0 {
		prev = r.cutoffs[w-1]
	}
	if r.cutoffs[w] == prev {
		return true, nil // an empty wave (e.g. 1% of 50 devices after a first wave of 1)
	}
	if !r.st.Dispatched {
		if r.in.ApproveEachWave && w > 0 && r.st.Approved < w {
			r.decide(ctx, fmt.Sprintf("wave %d/%d (%s) waits for approval: fleetflow rollout approve %s", w+1, len(r.cutoffs),
				r.in.Waves[w], r.in.RolloutID))
			r.awaiting = true
			r.report(ctx, rolloutAwaiting)
			err := workflow.Await(ctx, func() bool { return r.st.Approved >= w || r.st.Abort != nil })
			r.awaiting = false
			if err != nil {
				return false, err
			}
		}
		if r.st.Paused {
			r.report(ctx, rolloutPaused)
			if err := workflow.Await(ctx, func() bool { return !r.st.Paused || r.st.Abort != nil }); err != nil {
				return false, err
			}
		}
		if r.st.Abort != nil {
			return false, nil
		}
		if !r.perDevice() {
			if open, err := r.awaitWindow(ctx, w); err != nil || !open {
				return false, err
			}
		}
		if err := r.dispatch(ctx, w, prev); err != nil {
			return false, err
		}
		r.st.Dispatched = true
		r.upsertStage(ctx)
	}
	r.report(ctx, rolloutObserving)
	for {
		if r.st.Abort != nil || r.continueAsNewDue(ctx) {
			return false, nil
		}
		// Devices of the wave whose own window has opened since the last pass are dispatched now (unless the
		// rollout is paused: a pause holds every device not yet disturbed).
		if r.st.WindowWaiting > 0 && !r.st.Paused && !workflow.Now(ctx).Before(r.st.NextOpen) {
			if err := r.dispatch(ctx, w, prev); err != nil {
				return false, err
			}
			r.report(ctx, rolloutObserving)
			continue
		}
		obs, err := r.observe(ctx, false)
		if err != nil {
			return false, err
		}
		if r.breached() {
			c := r.progress.Counts
			r.decide(ctx, fmt.Sprintf("stopped in wave %d/%d: %s of %s dispatched devices failed, above the limit of %s; rolling back",
				w+1, len(r.cutoffs), numfmt.Thousands(c.Failed), numfmt.Thousands(c.Touched()), r.in.MaxFailures))
			return false, nil
		}
		if r.st.Abort != nil {
			return false, nil
		}
		if obs == nil || obs.Wave.Pending() > 0 {
			continue
		}
		if r.st.WindowWaiting == 0 {
			c := obs.Wave
			done := fmt.Sprintf("wave %d/%d (%s) done: %s succeeded, %s failed, %s skipped", w+1, len(r.cutoffs), r.in.Waves[w],
				numfmt.Thousands(c.Succeeded), numfmt.Thousands(c.Failed), numfmt.Thousands(c.Skipped))
			if c.OutsideWindow > 0 {
				done += fmt.Sprintf(", %s outside their maintenance window", numfmt.Thousands(c.OutsideWindow))
			}
			r.decide(ctx, done)
			return true, nil
		}
		if err := r.awaitDeviceWindows(ctx, w); err != nil {
			return false, err
		}
	}
}

// perDevice reports whether the rollout honours devices' own maintenance windows (docs/architecture.md,
// "Maintenance windows"): then each device of a wave waits for its window, instead of the wave for the
// operation's.
func (r *rolloutRun) perDevice() bool {
	return r.in.Maintenance != nil && r.in.Maintenance.WindowTag != ""
}

// dispatch runs the wave's dispatch activity: the whole wave, or with devices' own windows one pass over its
// queued devices judged at the workflow's clock, which leaves how many wait and when the first of their
// windows opens in the carried state.
func (r *rolloutRun) dispatch(ctx workflow.Context, w int, prev int64) error {
	r.report(ctx, rolloutDispatching)
	summary := fmt.Sprintf("dispatch wave %d/%d (%s devices)", w+1, len(r.cutoffs), numfmt.Thousands(r.cutoffs[w]-prev))
	req := RolloutDispatchInput{RolloutID: r.in.RolloutID, Wave: w, Cutoff: r.cutoffs[w], Firmware: r.in.Firmware}
	if r.perDevice() {
		req.Policy, req.At = r.in.Maintenance, workflow.Now(ctx)
		summary = fmt.Sprintf("dispatch wave %d/%d to the devices whose maintenance window is open", w+1, len(r.cutoffs))
	}
	dctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Minute, HeartbeatTimeout: r.in.HeartbeatTimeout,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
		Summary:     summary,
	})
	var res RolloutDispatchResult
	if err := executeActivity(dctx, Activities.RolloutDispatch, req).Get(ctx, &res); err != nil {
		return fmt.Errorf("dispatch wave %d of %s: %w", w+1, r.in.RolloutID, err)
	}
	r.st.WindowWaiting, r.st.NextOpen = res.Waiting, res.NextOpen
	if res.OutsideWindow > 0 {
		r.addReason(fmt.Sprintf("wave %d/%d: %s devices outside their maintenance window (it does not open before the deadline %s)",
			w+1, len(r.cutoffs), numfmt.Thousands(res.OutsideWindow), r.in.Maintenance.Deadline.UTC().Format(time.RFC3339)))
	}
	return nil
}

// awaitDeviceWindows holds the wave, on a durable timer, until the first of its waiting devices' windows
// opens; an abort ends the wait at once, and a pause holds the wave until it is resumed.
func (r *rolloutRun) awaitDeviceWindows(ctx workflow.Context, w int) error {
	if d := r.st.NextOpen.Sub(workflow.Now(ctx)); d > 0 {
		// The last decision, not one of the rollout's reasons: a wave may wait for many windows.
		r.st.Decision = fmt.Sprintf("wave %d/%d: %s devices wait for their maintenance window; the next opens %s", w+1, len(r.cutoffs),
			numfmt.Thousands(r.st.WindowWaiting), r.st.NextOpen.UTC().Format(time.RFC3339))
		r.report(ctx, rolloutWaitingForWindow)
		if _, err := workflow.AwaitWithTimeout(ctx, d, func() bool { return r.st.Abort != nil }); err != nil {
			return err
		}
	}
	if r.st.Paused && r.st.Abort == nil {
		r.report(ctx, rolloutPaused)
		if err := workflow.Await(ctx, func() bool { return !r.st.Paused || r.st.Abort != nil }); err != nil {
			return err
		}
	}
	return nil
}

// observe runs one observation activity (cancellable by an abort) and takes its counts. A nil observation
// means it was interrupted.
func (r *rolloutRun) observe(ctx workflow.Context, rollback bool) (*RolloutObserveResult, error) {
	summary := fmt.Sprintf("observe wave %d/%d", r.st.Wave+1, len(r.cutoffs))
	job := r.in.RolloutID
	if rollback {
		summary, job = "observe the rollback", rollbackJobID(r.in.RolloutID)
	}
	octx, cancel := workflow.WithCancel(ctx)
	r.cancelObserve = cancel
	defer func() { r.cancelObserve = nil }()
	octx = workflow.WithActivityOptions(octx, workflow.ActivityOptions{
		StartToCloseTimeout: r.in.ObserveFor + 2*time.Minute, HeartbeatTimeout: r.in.HeartbeatTimeout,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
		Summary:     summary,
	})
	req := RolloutObserveInput{RolloutID: r.in.RolloutID, JobID: job, Wave: r.st.Wave, Rollback: rollback,
		Policy:      rollout.Policy{Version: r.in.Firmware.Version, Bake: r.in.Bake, DeviceTimeout: r.in.DeviceTimeout},
		MaxFailures: r.in.MaxFailures, PollInterval: r.in.PollInterval, MaxWait: r.in.ObserveFor, RepushAfter: repushAfter}
	if !rollback && r.st.WindowWaiting > 0 && !r.st.Paused {
		// Return when the next device window opens, so that its devices are dispatched then, not up to an
		// observation later (a paused rollout dispatches nothing: it observes at its usual pace).
		if until := r.st.NextOpen.Sub(workflow.Now(ctx)); until < req.MaxWait {
			req.MaxWait = max(until, r.in.PollInterval)
		}
	}
	var obs RolloutObserveResult
	err := executeActivity(octx, Activities.RolloutObserve, req).Get(ctx, &obs)
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) && ctx.Err() == nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("observe %s: %w", r.in.RolloutID, err)
	}
	r.st.Counts = obs.Counts
	r.progress.WaveCounts = obs.Wave
	r.report(ctx, r.progress.State)
	r.upsertCounts(ctx)
	return &obs, nil
}

// rollback sends every touched device back to its previous firmware and waits until each has returned or
// given up (DeviceTimeout). It returns false when the run must continue as new first. It does not wait for
// maintenance windows (docs/architecture.md, "Maintenance windows"): a touched device was disturbed inside
// its window already, and a firmware bad enough to be rolled back does more harm than a second disturbance;
// devices still waiting for their window were never touched and are cancelled when the rollout finishes.
func (r *rolloutRun) rollback(ctx workflow.Context) (bool, error) {
	if !r.st.RollingBack {
		r.report(ctx, rolloutRollingBack)
		r.upsertStage(ctx)
		rctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: 30 * time.Minute, HeartbeatTimeout: r.in.HeartbeatTimeout,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
			Summary:     fmt.Sprintf("roll back %s touched devices", numfmt.Thousands(r.progress.Counts.Touched())),
		})
		if err := executeActivity(rctx, Activities.RolloutRollback, RolloutRollbackInput{RolloutID: r.in.RolloutID,
			JobID: rollbackJobID(r.in.RolloutID)}).Get(ctx, nil); err != nil {
			return false, fmt.Errorf("roll back %s: %w", r.in.RolloutID, err)
		}
		r.st.RollingBack = true
	}
	r.report(ctx, rolloutRollingBack)
	for {
		if r.continueAsNewDue(ctx) {
			return false, nil
		}
		obs, err := r.observe(ctx, true)
		if err != nil {
			return false, err
		}
		if obs != nil && obs.Counts.RollingBack == 0 {
			c := obs.Counts
			r.addReason(fmt.Sprintf("rollback: %s devices back on their previous firmware, %s could not be rolled back",
				numfmt.Thousands(c.RolledBack), numfmt.Thousands(c.RollbackFailed)))
			return true, nil
		}
	}
}

// finish records the end in the registry and returns the result.
func (r *rolloutRun) finish(ctx workflow.Context, state fleet.RolloutEnd) (RolloutResult, error) {
	r.finishing = true
	res := RolloutResult{RolloutID: r.in.RolloutID, Version: r.in.Firmware.Version, State: string(state), Waves: len(r.cutoffs),
		WavesDone: r.wavesDone(), Decision: r.st.Decision, Reasons: r.st.Reasons, Runs: r.st.Runs}
	summary := RolloutSummary{State: string(state), WavesDone: res.WavesDone, Decision: res.Decision, Reasons: res.Reasons,
		CancelReason: r.st.WindowMissed}
	fctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		Summary: "record the outcome: " + string(state)})
	var fin RolloutFinishResult
	if err := executeActivity(fctx, Activities.RolloutFinish, RolloutFinishInput{RolloutID: r.in.RolloutID, State: state,
		Summary: summary}).Get(ctx, &fin); err != nil {
		return res, fmt.Errorf("finish %s: %w", r.in.RolloutID, err)
	}
	res.Counts, res.Failures = fin.Counts, fin.Failures
	r.st.Counts = fin.Counts
	r.st.WindowWaiting = 0 // the devices that waited are cancelled now
	r.report(ctx, rolloutDone)
	r.upsertCounts(ctx)
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(string(state)),
		searchattr.Stage.ValueSet(fmt.Sprintf("ended in wave %d/%d", max(1, res.WavesDone), len(r.cutoffs)))); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res, nil
}

// awaitWindow holds wave w until the rollout's maintenance window is open (docs/architecture.md,
// "Maintenance windows"), on a durable timer. The next opening is computed in a side effect, since it reads
// the host's time zone database: replays use the recorded answer. A window that does not open before the
// deadline stops the rollout (as an abort without rollback would) and false is returned; the devices not
// dispatched are recorded as cancelled with that reason.
func (r *rolloutRun) awaitWindow(ctx workflow.Context, w int) (bool, error) {
	m := r.in.Maintenance
	if m == nil || m.Window == "" {
		return true, nil
	}
	now := workflow.Now(ctx)
	var next windowAnswer
	err := workflow.SideEffect(ctx, func(workflow.Context) any {
		win, err := window.Parse(m.Window, m.Timezone)
		if err != nil {
			return windowAnswer{Err: err.Error()}
		}
		return windowAnswer{Next: win.NextOpen(now), Name: win.String()}
	}).Get(&next)
	if err != nil {
		return false, fmt.Errorf("maintenance window of %s: %w", r.in.RolloutID, err)
	}
	if next.Err != "" {
		return false, temporal.NewNonRetryableApplicationError(next.Err, ErrTypeInvalidInput, nil)
	}
	if !next.Next.Before(m.Deadline) {
		reason := fmt.Sprintf("maintenance window %s does not open before the rollout's deadline %s", next.Name,
			m.Deadline.UTC().Format(time.RFC3339))
		r.st.WindowMissed = reason
		r.st.Abort = &AbortInput{Reason: reason}
		r.decide(ctx, fmt.Sprintf("wave %d/%d not started: %s; its devices and the later waves' are reported as cancelled", w+1, len(r.cutoffs), reason))
		return false, nil
	}
	if d := next.Next.Sub(now); d > 0 {
		r.decide(ctx, fmt.Sprintf("wave %d/%d waits for the maintenance window %s: it opens %s", w+1, len(r.cutoffs), next.Name,
			next.Next.UTC().Format(time.RFC3339)))
		r.report(ctx, rolloutWaitingForWindow)
		if _, err := workflow.AwaitWithTimeout(ctx, d, func() bool { return r.st.Abort != nil }); err != nil {
			return false, err
		}
		if r.st.Abort != nil {
			return false, nil
		}
	}
	return true, nil
}

// windowAnswer is the recorded result of a maintenance window's next opening.
type windowAnswer struct {
	Next time.Time `json:"next"`
	Name string    `json:"name"`
	Err  string    `json:"err,omitempty"`
}

// wavesDone is the number of waves that were dispatched.
func (r *rolloutRun) wavesDone() int {
	n := r.st.Wave
	if r.st.Dispatched && n < len(r.cutoffs) {
		n++
	}
	return min(n, len(r.cutoffs))
}

func (r *rolloutRun) breached() bool {
	c := r.st.Counts
	return r.in.MaxFailures.Exceeded(c.Failed, c.Touched())
}

func (r *rolloutRun) continueAsNewDue(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	return info.GetCurrentHistoryLength() >= r.in.ContinueAfterEvents || info.GetContinueAsNewSuggested()
}

func (r *rolloutRun) continueAsNew(ctx workflow.Context) (RolloutResult, error) {
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return RolloutResult{}, err
	}
	workflow.GetLogger(ctx).Info("continuing as new", "rollout", r.in.RolloutID, "wave", r.st.Wave)
	next := r.in
	next.Carry = r.st
	return RolloutResult{}, workflow.NewContinueAsNewError(ctx, FirmwareRollout, next)
}

// stateName is the progress state implied by the carried state (at the start of a run).
func (r *rolloutRun) stateName() string {
	switch {
	case r.st.RollingBack:
		return rolloutRollingBack
	case r.st.Paused:
		return rolloutPaused
	}
	return rolloutObserving
}

func (r *rolloutRun) decide(ctx workflow.Context, d string) {
	r.st.Decision = d
	r.addReason(d)
	r.report(ctx, r.progress.State)
}

// addReason keeps the rollout's story for its result; bounded, since it is carried across continue-as-new.
func (r *rolloutRun) addReason(s string) {
	r.st.Reasons = append(r.st.Reasons, s)
	if n := len(r.st.Reasons); n > 40 {
		r.st.Reasons = r.st.Reasons[n-40:]
	}
}

func (r *rolloutRun) report(ctx workflow.Context, state string) {
	p := &r.progress
	p.State, p.Counts, p.Decision, p.UpdatedAt = state, r.st.Counts, r.st.Decision, workflow.Now(ctx)
	p.WindowWaiting, p.NextOpen = r.st.WindowWaiting, r.st.NextOpen
	p.Wave = min(r.st.Wave+1, len(r.cutoffs))
	if !r.st.Dispatched && r.st.Wave == 0 && state != rolloutRollingBack {
		p.Wave = 0
	}
	workflow.SetCurrentDetails(ctx, rolloutDetails(*p))
}

func (r *rolloutRun) upsertStage(ctx workflow.Context) {
	stage := fmt.Sprintf("wave %d/%d", r.st.Wave+1, len(r.cutoffs))
	state := searchattr.StateRunning
	if r.progress.State == rolloutRollingBack {
		stage, state = "rolling back", searchattr.StateRollingBack
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Stage.ValueSet(stage), searchattr.State.ValueSet(state)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

func (r *rolloutRun) upsertCounts(ctx workflow.Context) {
	c := r.st.Counts
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Done.ValueSet(c.Succeeded),
		searchattr.Failed.ValueSet(c.Failed+c.RollbackFailed)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

// registerUpdates installs pause, resume, approve and abort with validators.
func (r *rolloutRun) registerUpdates(ctx workflow.Context) error {
	id := r.in.RolloutID
	stopping := func() error {
		switch {
		case r.st.RollingBack || r.progress.State == rolloutRollingBack:
			return fmt.Errorf("rollout %s is rolling back", id)
		case r.st.Abort != nil:
			return fmt.Errorf("rollout %s is being aborted", id)
		case r.finishing || r.progress.State == rolloutDone:
			return fmt.Errorf("rollout %s has finished", id)
		}
		return nil
	}
	type handler struct {
		name     string
		validate func() error
		apply    func(ctx workflow.Context) string
	}
	handlers := []handler{
		{UpdatePause, func() error {
			if err := stopping(); err != nil {
				return err
			}
			if r.st.Paused {
				return fmt.Errorf("rollout %s is already paused", id)
			}
			return nil
		}, func(ctx workflow.Context) string {
			r.st.Paused = true
			if r.progress.State == rolloutDispatching || r.progress.State == rolloutObserving {
				return fmt.Sprintf("rollout %s will not start another wave until resumed; wave %d finishes", id, r.progress.Wave)
			}
			r.report(ctx, rolloutPaused)
			return fmt.Sprintf("rollout %s paused", id)
		}},
		{UpdateResume, func() error {
			if err := stopping(); err != nil {
				return err
			}
			if !r.st.Paused {
				return fmt.Errorf("rollout %s is not paused", id)
			}
			return nil
		}, func(ctx workflow.Context) string {
			r.st.Paused = false
			if r.awaiting {
				r.report(ctx, rolloutAwaiting)
			}
			return fmt.Sprintf("rollout %s resumed", id)
		}},
	}
	for _, h := range handlers {
		h := h
		if err := workflow.SetUpdateHandlerWithOptions(ctx, h.name, func(ctx workflow.Context) (string, error) {
			return h.apply(ctx), nil
		}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error { return h.validate() }}); err != nil {
			return fmt.Errorf("register %s: %w", h.name, err)
		}
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateApprove, func(ctx workflow.Context) (string, error) {
		r.st.Approved = r.st.Wave
		return fmt.Sprintf("rollout %s: wave %d/%d approved", id, r.st.Wave+1, len(r.cutoffs)), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		if err := stopping(); err != nil {
			return err
		}
		if !r.awaiting {
			return fmt.Errorf("rollout %s is not waiting for approval (it is %s in wave %d/%d)", id, r.progress.State,
				r.progress.Wave, len(r.cutoffs))
		}
		return nil
	}}); err != nil {
		return fmt.Errorf("register approve: %w", err)
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateAbort, func(ctx workflow.Context, req AbortInput) (string, error) {
		r.st.Abort = &req
		what := "devices keep the firmware they have now"
		if req.Rollback {
			what = "touched devices go back to their previous firmware"
		}
		reason := "aborted by the operator"
		if req.Reason != "" {
			reason += ": " + req.Reason
		}
		r.decide(ctx, reason)
		if r.cancelObserve != nil {
			r.cancelObserve()
		}
		return fmt.Sprintf("rollout %s aborted; %s", id, what), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, req AbortInput) error {
		return stopping()
	}}); err != nil {
		return fmt.Errorf("register abort: %w", err)
	}
	return nil
}

// rollbackJobID is the job id of a rollout's rollback: a new id, so that devices treat it as a new update.
func rollbackJobID(rolloutID string) string { return rolloutID + ".rb" }

func withRolloutDefaults(in RolloutInput) RolloutInput {
	if in.DeviceTimeout <= 0 {
		in.DeviceTimeout = DefaultDeviceTimeout
	}
	if in.PollInterval <= 0 {
		in.PollInterval = DefaultRolloutPoll
	}
	if in.ObserveFor <= 0 {
		in.ObserveFor = DefaultObserveFor
	}
	if in.ContinueAfterEvents <= 0 {
		in.ContinueAfterEvents = DefaultContinueAfterEvents
	}
	if in.HeartbeatTimeout <= 0 {
		in.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	return in
}

// rolloutDetails renders the markdown the Temporal UI shows as the rollout's current details.
func rolloutDetails(p RolloutProgress) string {
	var b strings.Builder
	b.WriteString(fmt.Sprintf("**%s → %s** — %s", p.RolloutID, p.Version, strings.ReplaceAll(p.State, "_", " ")))
	if p.Wave > 0 {
		b.WriteString(fmt.Sprintf(", wave %d/%d (%s)", p.Wave, len(p.Waves), p.Waves[p.Wave-1]))
	}
	b.WriteString(fmt.Sprintf("\n\n%s of %s devices: %s", numfmt.Thousands(p.Counts.Touched()), numfmt.Thousands(p.Total), p.Counts))
	if p.WindowWaiting > 0 {
		b.WriteString(fmt.Sprintf("\n\n%s devices of the wave wait for their maintenance window; the next opens %s",
			numfmt.Thousands(p.WindowWaiting), p.NextOpen.UTC().Format(time.RFC3339)))
	}
	if p.Decision != "" {
		b.WriteString(fmt.Sprintf("\n\nlast decision: %s", p.Decision))
	}
	return b.String()
}
