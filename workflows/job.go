package workflows

import (
	"errors"
	"fmt"
	"math"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Defaults for JobInput. A batch of 1,000 devices is one registry transaction and one MQTT fan-out; a
// window of 8 keeps a 10,000-device job within a couple of rounds.
const (
	DefaultJobBatchSize     = 1000
	DefaultJobWindow        = 8
	DefaultJobBatchesPerRun = 400
	DefaultMethodTimeout    = 30 * time.Second
	DefaultAckTimeout       = 2 * time.Minute
	// ackPoll is the longest a JobCollectAcks activity waits before it reports progress, while the wait is
	// young (see waitPoll).
	ackPoll = 10 * time.Second
	// DefaultWipeTimeout bounds the best-effort factory reset of a decommission with --wipe.
	DefaultWipeTimeout = 10 * time.Second
	// DefaultRetireBatchSize: retiring is one registry transaction per batch without device round trips,
	// so batches are larger than for jobs that talk to devices.
	DefaultRetireBatchSize = 5000
	// DefaultRotateGrace is how long a credential rotation waits for devices to connect with their new
	// secret before it reports them (they keep both secrets meanwhile and after).
	DefaultRotateGrace = 7 * 24 * time.Hour
	// DefaultRotateBatchSize: a rotation batch is one registry transaction, one method fan-out and one
	// fsync group on the devices' side; the reconnects it causes arrive at the gateways together.
	DefaultRotateBatchSize = 1000
	// offlineGrace is how long a desired job waits before it gives up on devices that are all offline:
	// connection state is recorded in batches, so a device that just connected can look offline briefly.
	offlineGrace = 5 * time.Second
)

// FleetJob applies one change to a frozen set of devices — a desired or tags merge patch, or a direct
// method — in batches over the set, then (for desired patches) waits until devices acknowledge the change
// in their reported properties. pause, resume and cancel are Workflow Updates.
func FleetJob(ctx workflow.Context, in JobInput) (JobResult, error) {
	switch in.Kind {
	case fleet.JobSetDesired, fleet.JobSetTags, fleet.JobMethod:
	default:
		return JobResult{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf("unknown job kind %q", in.Kind), ErrTypeInvalidInput, nil)
	}
	return runJob(ctx, in, FleetJob)
}

// Decommission retires a frozen set of devices in batches (see fleet.JobRetire): credentials revoked and live
// sessions dropped at once, twins archived, pending jobs and rollouts left, optionally a factory reset sent
// first. It is a job over devices like FleetJob, with the same batching, pause, resume and cancel, under its
// own name so that the UI's list reads like an operations log.
func Decommission(ctx workflow.Context, in JobInput) (JobResult, error) {
	if in.Kind != fleet.JobRetire {
		return JobResult{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf("a decommission has kind %q, not %q", fleet.JobRetire, in.Kind),
			ErrTypeInvalidInput, nil)
	}
	return runJob(ctx, in, Decommission)
}

// RotateCredentials gives a frozen set of devices new secrets (fleet.JobRotate; docs/architecture.md,
// "Credential rotation"): in batches, each device's new digest is written into its free slot, then the
// secret — generated inside the activity, never in a workflow payload — is delivered with the
// rotateCredentials method; once a device has connected with it, its old slot is cleared. Devices that do
// not connect with the new secret within the grace are reported and keep both. Certificate devices renew
// their certificate the same way, from a key pair and request of their own (docs/architecture.md,
// "Certificate renewal"). It is a job over devices like FleetJob, with the same batching, pause, resume,
// cancel and status.
func RotateCredentials(ctx workflow.Context, in JobInput) (JobResult, error) {
	if in.Kind != fleet.JobRotate {
		return JobResult{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf("a credential rotation has kind %q, not %q", fleet.JobRotate, in.Kind),
			ErrTypeInvalidInput, nil)
	}
	return runJob(ctx, in, RotateCredentials)
}

// runJob is the body of FleetJob and Decommission; self is the workflow to continue as.
func runJob(ctx workflow.Context, in JobInput, self func(workflow.Context, JobInput) (JobResult, error)) (JobResult, error) {
	in = withJobDefaults(in)
	// A job whose input names its targets but has no Total yet is created here, as the first step. Inputs
	// recorded before creation moved into the workflow carry Total > 0 and take the old path, so their
	// histories replay unchanged.
	creating := in.Total == 0 && (in.Query != "" || in.IDs != nil)
	if in.JobID == "" || (in.Total <= 0 && !creating) {
		return JobResult{}, temporal.NewNonRetryableApplicationError("a job id and a non-empty target set are required", ErrTypeInvalidInput, nil)
	}
	in.Runs++
	progress := JobProgress{JobID: in.JobID, Kind: in.Kind, State: "running", Total: in.Total, Dispatched: in.Next,
		Counts: in.Counts, Runs: in.Runs}
	if in.Paused {
		progress.State = "paused"
	}
	report := func() {
		progress.Counts, progress.Dispatched, progress.UpdatedAt = in.Counts, in.Next, workflow.Now(ctx)
		workflow.SetCurrentDetails(ctx, jobDetails(progress))
	}
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (JobProgress, error) { return progress, nil }); err != nil {
		return JobResult{}, fmt.Errorf("register progress query: %w", err)
	}
	if creating {
		progress.State = JobStateCreating
		report()
		total, err := createJob(ctx, &in)
		if err != nil {
			return JobResult{}, err
		}
		progress.State, progress.Total = "running", total
	}
	dispatchDone := func() bool { return in.Next >= in.Total && in.WindowWaiting == 0 }
	if err := registerJobUpdates(ctx, &in, &progress, dispatchDone, report); err != nil {
		return JobResult{}, err
	}
	report()

	batch, window := in.BatchSize, in.Window
	if in.Rate > 0 {
		// One batch per second, one at a time: the rate holds whatever the batch costs.
		batch, window = min(batch, max(1, int64(math.Floor(in.Rate)))), 1
	}
	timeout := in.Timeout
	sel := workflow.NewSelector(ctx)
	inflight, dispatched := 0, 0
	var firstErr error
	var nextSlot time.Time
	for firstErr == nil {
		for !in.Paused && !in.Cancelled && inflight < window && in.Next < in.Total && dispatched < in.BatchesPerRun &&
			!workflow.Now(ctx).Before(nextSlot) {
			req := JobBatchInput{JobID: in.JobID, Kind: fleet.JobKind(in.Kind), First: in.Next, Last: min(in.Next+batch, in.Total),
				Patch: in.Patch, Method: in.Method, Payload: in.Payload, Timeout: timeout, Reason: in.Reason, Wipe: in.Wipe,
				CertValidity: in.CertValidity}
			// A method or a factory reset waits for devices inside the batch; a patch does not (its timeout
			// is the acknowledgement wait, which may be days).
			deviceWait := timeout
			switch in.Kind {
			case fleet.JobSetDesired, fleet.JobSetTags:
				deviceWait = 0
			case fleet.JobRotate:
				// A certificate renewal waits for two answers: the request, then the installation.
				deviceWait = 2 * timeout
			}
			actTimeout := 5*time.Minute + deviceWait
			if in.Rate > 0 {
				// The next batch may start once this one's devices have had their share of the rate.
				nextSlot = workflow.Now(ctx).Add(time.Duration(float64(req.Last-req.First) / in.Rate * float64(time.Second)))
			}
			bctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
				StartToCloseTimeout: actTimeout, HeartbeatTimeout: in.HeartbeatTimeout + deviceWait,
				RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
				Summary:     fmt.Sprintf("devices %s–%s", numfmt.Thousands(req.First+1), numfmt.Thousands(req.Last)),
			})
			if in.Maintenance != nil {
				f := executeActivity(bctx, Activities.JobWindowBatch, JobWindowBatchInput{JobBatchInput: req, Policy: *in.Maintenance, At: workflow.Now(ctx)})
				sel.AddFuture(f.Future, func(f workflow.Future) {
					inflight--
					var r JobWindowBatchResult
					if err := f.Get(ctx, &r); err != nil {
						if firstErr == nil {
							firstErr = err
						}
						return
					}
					in.Counts.Add(r.Counts)
					in.WindowWaiting += r.Waiting
					if !r.NextOpen.IsZero() && (in.NextOpen.IsZero() || r.NextOpen.Before(in.NextOpen)) {
						in.NextOpen = r.NextOpen
					}
					report()
				})
				in.Next = req.Last
				inflight++
				dispatched++
				continue
			}
			f := executeActivity(bctx, Activities.JobBatch, req)
			sel.AddFuture(f.Future, func(f workflow.Future) {
				inflight--
				var c fleet.JobCounts
				if err := f.Get(ctx, &c); err != nil {
					if firstErr == nil {
						firstErr = err
					}
					return
				}
				in.Counts.Add(c)
				report()
			})
			in.Next = req.Last
			inflight++
			dispatched++
		}
		report()
		if inflight > 0 {
			sel.Select(ctx)
			continue
		}
		if in.Maintenance != nil && !in.Cancelled && in.Next >= in.Total && in.WindowWaiting > 0 && dispatched < in.BatchesPerRun {
			if err := waitForWindows(ctx, &in, &progress, report); err != nil {
				return JobResult{}, err
			}
			continue
		}
		if in.Cancelled || in.Next >= in.Total || dispatched >= in.BatchesPerRun {
			break
		}
		if in.Paused {
			if err := workflow.Await(ctx, func() bool { return !in.Paused || in.Cancelled }); err != nil {
				return JobResult{}, err
			}
			continue
		}
		if d := nextSlot.Sub(workflow.Now(ctx)); d > 0 {
			if err := workflow.Sleep(ctx, d); err != nil {
				return JobResult{}, err
			}
		}
	}
	if firstErr != nil {
		closeJob(ctx, &in, fleet.JobEndFailed)
		setJobState(ctx, searchattr.StateFailed, in.Counts)
		return JobResult{}, firstErr
	}
	if !in.Cancelled && in.Next < in.Total {
		upsertJobCounts(ctx, in.Counts)
		if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
			return JobResult{}, err
		}
		return JobResult{}, workflow.NewContinueAsNewError(ctx, self, in)
	}

	rotate := in.Kind == fleet.JobRotate
	if (in.Kind == fleet.JobSetDesired || rotate) && in.Counts.Running > 0 && !in.Cancelled {
		progress.State = "awaiting-acks"
		if rotate {
			progress.State = "awaiting-connects"
		}
		report()
		bounded := workflow.GetVersion(ctx, boundedWaitsVersion, workflow.DefaultVersion, 1) >= 1
		if in.AckStart.IsZero() {
			in.AckStart = workflow.Now(ctx)
		}
		ackStart := in.AckStart
		deadline := ackStart.Add(timeout)
		if rotate {
			deadline = ackStart.Add(in.Grace)
		}
		actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: waitPollSlow + time.Minute, HeartbeatTimeout: in.HeartbeatTimeout,
			Summary: "wait for devices to acknowledge the desired change",
		})
		for polls := 1; !in.Cancelled; polls++ {
			poll := ackPoll
			if bounded {
				poll = waitPoll(ackPoll, workflow.Now(ctx).Sub(ackStart))
			}
			wait := max(0, min(poll, deadline.Sub(workflow.Now(ctx))))
			var st JobCollectAcksResult
			req := JobCollectAcksInput{JobID: in.JobID, Keys: in.AckKeys, MaxWait: wait}
			if rotate {
				req.Kind, req.CredentialValidity = in.Kind, in.CredentialValidity
			}
			if err := executeActivity(actx, Activities.JobCollectAcks, req).Get(ctx, &st); err != nil {
				closeJob(ctx, &in, fleet.JobEndFailed)
				return JobResult{}, fmt.Errorf("collect acknowledgements of %s: %w", in.JobID, err)
			}
			in.Counts.Succeeded += st.Acked
			in.Counts.Running = st.Waiting
			report()
			// Offline devices get their desired state when they reconnect; waiting for them would only
			// hold the job open.
			// A rotation waits for offline devices too: they come back with their new secret within the grace.
			if st.Waiting == 0 || (!rotate && st.WaitingOnline == 0 && workflow.Now(ctx).Sub(ackStart) >= offlineGrace) ||
				!workflow.Now(ctx).Before(deadline) {
				break
			}
			if bounded && (polls >= maxWaitPolls || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
				// The wait goes on in a new run, with its start (hence its deadline) in the input.
				upsertJobCounts(ctx, in.Counts)
				if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
					return JobResult{}, err
				}
				return JobResult{}, workflow.NewContinueAsNewError(ctx, self, in)
			}
		}
	}
	state := fleet.JobCompleted
	switch {
	case in.Cancelled:
		state = fleet.JobEndCancelled
	case in.Counts.Unsuccessful()+in.Counts.Running > 0:
		// Devices still waiting for an acknowledgement are closed as timed out or offline.
		state = fleet.JobCompletedWithFailures
	}
	progress.State = "closing"
	report()
	counts, err := closeJob(ctx, &in, state)
	if err != nil {
		return JobResult{}, err
	}
	in.Counts = counts
	progress.State = "done"
	report()
	saState := searchattr.StateCompleted
	if in.Cancelled {
		saState = searchattr.StateCancelled
	}
	setJobState(ctx, saState, in.Counts)
	return JobResult{JobID: in.JobID, State: string(state), Total: in.Total, Counts: in.Counts, Runs: in.Runs}, nil
}

// JobStateWaitingForWindow is the progress state of a job whose remaining devices wait for their maintenance
// windows to open.
const JobStateWaitingForWindow = "waiting-for-window"

// waitForWindows sleeps, on a durable timer, until the first waiting device's maintenance window opens (or
// the policy's deadline, when the rest are reported as outside their windows), then starts another pass over
// the target set: each range's totals are exact, so the counts start again from zero with the pass
// (docs/architecture.md, "Maintenance windows").
func waitForWindows(ctx workflow.Context, in *JobInput, progress *JobProgress, report func()) error {
	wake := in.NextOpen
	if wake.IsZero() || in.Maintenance.Deadline.Before(wake) {
		wake = in.Maintenance.Deadline
	}
	progress.State = JobStateWaitingForWindow
	report()
	stage := fmt.Sprintf("%s devices wait for their maintenance window; next opens %s", numfmt.Thousands(in.WindowWaiting),
		wake.UTC().Format(time.RFC3339))
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Stage.ValueSet(stage)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	if d := wake.Sub(workflow.Now(ctx)); d > 0 {
		if _, err := workflow.AwaitWithTimeout(ctx, d, func() bool { return in.Cancelled }); err != nil {
			return err
		}
	}
	progress.State = "running"
	if in.Paused {
		progress.State = "paused"
	}
	in.Next, in.Counts, in.WindowWaiting, in.NextOpen = 0, fleet.JobCounts{}, 0, time.Time{}
	in.WindowPasses++
	report()
	return nil
}

// JobStateCreating is the progress state of a job whose target set is being frozen; the CLI waits until
// the state moves on (or the workflow fails) to tell the operator the total.
const JobStateCreating = "creating"

// createJob is the job's first step: JobCreate records the job and freezes its target set, idempotently
// (a retry or a replay finds the job already there). An empty set or a query that does not compile fails
// the workflow with a non-retryable error whose type the CLI maps to its message and exit code.
func createJob(ctx workflow.Context, in *JobInput) (int64, error) {
	cctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 5 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second},
		Summary:     "create the job and freeze its target set"})
	res, err := executeActivity(cctx, Activities.JobCreate, JobCreateInput{JobID: in.JobID, Kind: in.Kind, Query: in.Query,
		IDs: in.IDs, Spec: in.Spec}).Result(ctx)
	if err != nil {
		// Returned as is: the application error's type (EmptyTarget, InvalidQuery) is what the CLI reads.
		return 0, err
	}
	in.Total, in.IDs = res.Total, nil
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Total.ValueSet(res.Total)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res.Total, nil
}

// registerJobUpdates installs pause, resume and cancel. Validators refuse what makes no sense in the job's
// current state, so the operator gets a clear answer instead of a silent no-op.
func registerJobUpdates(ctx workflow.Context, in *JobInput, progress *JobProgress, dispatchDone func() bool, report func()) error {
	err := workflow.SetUpdateHandlerWithOptions(ctx, UpdatePause, func(ctx workflow.Context) (string, error) {
		in.Paused = true
		progress.State = "paused"
		setJobState(ctx, searchattr.StatePaused, in.Counts)
		report()
		return fmt.Sprintf("job %s paused after %s of %s devices; batches in flight finish", in.JobID,
			numfmt.Thousands(in.Next), numfmt.Thousands(in.Total)), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		switch {
		case in.Cancelled:
			return fmt.Errorf("job %s is being cancelled", in.JobID)
		case in.Paused:
			return fmt.Errorf("job %s is already paused", in.JobID)
		case dispatchDone():
			return fmt.Errorf("job %s has reached every device; nothing left to pause", in.JobID)
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("register pause: %w", err)
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateResume, func(ctx workflow.Context) (string, error) {
		in.Paused = false
		progress.State = "running"
		setJobState(ctx, searchattr.StateRunning, in.Counts)
		report()
		return fmt.Sprintf("job %s resumed at device %s of %s", in.JobID, numfmt.Thousands(in.Next), numfmt.Thousands(in.Total)), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		if !in.Paused {
			return fmt.Errorf("job %s is not paused", in.JobID)
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("register resume: %w", err)
	}
	err = workflow.SetUpdateHandlerWithOptions(ctx, UpdateCancel, func(ctx workflow.Context) (string, error) {
		in.Cancelled = true
		progress.State = "cancelling"
		report()
		return fmt.Sprintf("job %s cancelled: %s of %s devices were reached; the rest are marked cancelled", in.JobID,
			numfmt.Thousands(in.Next), numfmt.Thousands(in.Total)), nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context) error {
		switch {
		case in.Cancelled:
			return fmt.Errorf("job %s is already being cancelled", in.JobID)
		case progress.State == "closing" || progress.State == "done":
			return fmt.Errorf("job %s has finished; nothing to cancel", in.JobID)
		}
		return nil
	}})
	if err != nil {
		return fmt.Errorf("register cancel: %w", err)
	}
	return nil
}

// closeJob records the end of a job and returns the final counts from the registry.
func closeJob(ctx workflow.Context, in *JobInput, state fleet.JobEnd) (fleet.JobCounts, error) {
	cctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 2 * time.Minute,
		Summary: "record the outcome: " + string(state)})
	var c fleet.JobCounts
	err := executeActivity(cctx, Activities.JobClose, JobCloseInput{JobID: in.JobID, State: state}).Get(ctx, &c)
	if err != nil {
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) {
			return in.Counts, err
		}
		return in.Counts, fmt.Errorf("close job %s: %w", in.JobID, err)
	}
	return c, nil
}

func withJobDefaults(in JobInput) JobInput {
	if in.BatchSize <= 0 {
		in.BatchSize = DefaultJobBatchSize
	}
	if in.Window <= 0 {
		in.Window = DefaultJobWindow
	}
	if in.BatchesPerRun <= 0 {
		in.BatchesPerRun = DefaultJobBatchesPerRun
	}
	if in.HeartbeatTimeout <= 0 {
		in.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if in.Timeout <= 0 {
		switch in.Kind {
		case fleet.JobSetDesired:
			in.Timeout = DefaultAckTimeout
		case fleet.JobRetire:
			in.Timeout = DefaultWipeTimeout
		default:
			in.Timeout = DefaultMethodTimeout
		}
	}
	if in.Kind == fleet.JobRetire && in.BatchSize == DefaultJobBatchSize {
		in.BatchSize = DefaultRetireBatchSize
	}
	if in.Kind == fleet.JobRotate && in.Grace <= 0 {
		in.Grace = DefaultRotateGrace
	}
	return in
}

func upsertJobCounts(ctx workflow.Context, c fleet.JobCounts) {
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Done.ValueSet(c.Succeeded), searchattr.Failed.ValueSet(c.Unsuccessful()))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

func setJobState(ctx workflow.Context, state string, c fleet.JobCounts) {
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(state),
		searchattr.Done.ValueSet(c.Succeeded), searchattr.Failed.ValueSet(c.Unsuccessful()))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

// jobDetails renders the markdown the Temporal UI shows as the job's current details.
func jobDetails(p JobProgress) string {
	c := p.Counts
	s := fmt.Sprintf("**%s %s** — reached %s / %s devices\n\nsucceeded %s · failed %s · timed out %s · offline %s",
		p.Kind, p.State, numfmt.Thousands(p.Dispatched), numfmt.Thousands(p.Total), numfmt.Thousands(c.Succeeded), numfmt.Thousands(c.Failed),
		numfmt.Thousands(c.TimedOut), numfmt.Thousands(c.Offline))
	if c.Running > 0 {
		s += " · awaiting acknowledgement " + numfmt.Thousands(c.Running)
	}
	return s
}
