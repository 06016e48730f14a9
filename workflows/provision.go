package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Defaults for ProvisionInput. 25,000 rows per batch keeps a 1M-device run at 40 activities: every activity
// costs the dev server and worker CPU, which the batches' Postgres work needs (measured on 1M devices with
// staging overlapped: 6.1 s end to end with 10,000, 5.4–5.6 s with 20,000 to 50,000; earlier 7.1 s against
// 9.2 s with 5,000 against 10,000), and a window of 4 keeps both cores and a few Postgres connections busy
// (2 was slower, 6 no faster).
const (
	DefaultBatchSize        = 25000
	DefaultWindow           = 4
	DefaultBatchesPerRun    = 400
	DefaultHeartbeatTimeout = 20 * time.Second
	// saEvery is how many completed batches pass between search-attribute upserts (each is a history event).
	saEvery = 10
	// AwaitStagedMax is the longest an AwaitStaged activity waits for more staged rows before it returns
	// what it found (the workflow then asks again).
	AwaitStagedMax = time.Minute
	// connectPoll is the longest a WaitConnected activity waits before it reports progress.
	connectPoll = 10 * time.Second
)

// ProvisionFleet creates the identities, credentials and twins of a staged manifest in batches: a sliding
// window of ProvisionBatch activities over line ranges, continue-as-new every BatchesPerRun batches, and,
// when asked, a wait until the new devices have connected and reported their capabilities.
func ProvisionFleet(ctx workflow.Context, in ProvisionInput) (ProvisionResult, error) {
	in = withProvisionDefaults(in)
	if in.Op == "" || in.Rows < 0 {
		return ProvisionResult{}, temporal.NewNonRetryableApplicationError("op and a non-negative row count are required", "InvalidInput", nil)
	}
	in.Runs++
	logger := workflow.GetLogger(ctx)
	progress := ProvisionProgress{Op: in.Op, Phase: "provisioning", Rows: in.Rows, Staging: in.Staging, Counts: in.Counts,
		Runs: in.Runs, UpdatedAt: workflow.Now(ctx)}
	if err := workflow.SetQueryHandler(ctx, QueryProgress, func() (ProvisionProgress, error) { return progress, nil }); err != nil {
		return ProvisionResult{}, fmt.Errorf("register progress query: %w", err)
	}
	report := func() {
		progress.Counts, progress.UpdatedAt = in.Counts, workflow.Now(ctx)
		workflow.SetCurrentDetails(ctx, provisionDetails(progress))
	}
	report()

	sel := workflow.NewSelector(ctx)
	inflight, dispatched, completed := 0, 0, 0
	var firstErr error
	// While the CLI still stages the manifest (in.Staging), one AwaitStaged activity at a time follows the
	// staged-rows cursor, and only whole batches are dispatched, so that batch boundaries are those of a
	// manifest staged at once.
	awaiting := false
	stopAwait := func() {}
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
			stopAwait() // no more rows are needed
		}
	}
	for {
		for firstErr == nil && inflight < in.Window && in.Next < in.Rows && dispatched < in.BatchesPerRun &&
			(!in.Staging || in.Rows-in.Next >= in.BatchSize) {
			req := ProvisionBatchInput{Op: in.Op, First: in.Next, Last: min(in.Next+in.BatchSize, in.Rows), CredentialValidity: in.CredentialValidity}
			bctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
				StartToCloseTimeout: 10 * time.Minute, HeartbeatTimeout: in.HeartbeatTimeout,
				RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second,
					NonRetryableErrorTypes: []string{ErrTypeNotStaged}},
				Summary: fmt.Sprintf("rows %d–%d", req.First+1, req.Last),
			})
			f := executeActivity(bctx, Activities.ProvisionBatch, req)
			sel.AddFuture(f.Future, func(f workflow.Future) {
				inflight--
				var c fleet.ProvisionCounts
				if err := f.Get(ctx, &c); err != nil {
					fail(err)
					return
				}
				in.Counts.Add(c)
				completed++
				report()
				if completed%saEvery == 0 {
					upsertCounts(ctx, in.Counts)
				}
			})
			in.Next = req.Last
			inflight++
			dispatched++
		}
		if in.Staging && !awaiting && firstErr == nil && dispatched < in.BatchesPerRun {
			awaiting = true
			actx, cancel := workflow.WithCancel(ctx)
			stopAwait = cancel
			actx = workflow.WithActivityOptions(actx, workflow.ActivityOptions{
				StartToCloseTimeout: AwaitStagedMax + time.Minute, HeartbeatTimeout: in.HeartbeatTimeout,
				RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 10 * time.Second,
					NonRetryableErrorTypes: []string{ErrTypeNotStaged, ErrTypeStagingAbandoned}},
				Summary: fmt.Sprintf("follow the staging after row %d", in.Rows),
			})
			f := executeActivity(actx, Activities.AwaitStaged, AwaitStagedInput{Op: in.Op, After: in.Rows})
			sel.AddFuture(f.Future, func(f workflow.Future) {
				awaiting, stopAwait = false, func() {}
				var st fleet.Staged
				if err := f.Get(ctx, &st); err != nil {
					fail(err) // a cancellation after another failure changes nothing: firstErr is set
					return
				}
				in.Rows, in.Staging = max(in.Rows, st.Rows), !st.Done
				progress.Rows, progress.Staging = in.Rows, in.Staging
				if st.Done {
					if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Total.ValueSet(in.Rows)); err != nil {
						logger.Warn("upsert search attributes", "err", err)
					}
				}
			})
		}
		progress.InFlight = inflight
		if inflight == 0 && !awaiting {
			break
		}
		sel.Select(ctx)
		if workflow.GetInfo(ctx).GetContinueAsNewSuggested() && dispatched < in.BatchesPerRun {
			dispatched = in.BatchesPerRun // stop dispatching; drain and continue as new
		}
	}
	if firstErr != nil {
		setState(ctx, "failed", in.Counts)
		dropStagingAfterFailure(ctx, in.Op)
		return ProvisionResult{}, firstErr
	}
	if in.Next < in.Rows || in.Staging {
		upsertCounts(ctx, in.Counts)
		logger.Info("continuing as new", "op", in.Op, "next", in.Next, "rows", in.Rows)
		if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
			return ProvisionResult{}, err
		}
		return ProvisionResult{}, workflow.NewContinueAsNewError(ctx, ProvisionFleet, in)
	}
	upsertCounts(ctx, in.Counts)

	res := ProvisionResult{Op: in.Op, Rows: in.Rows, Counts: in.Counts, Runs: in.Runs}
	if in.AwaitConnect > 0 && in.Counts.Created > 0 {
		bounded := workflow.GetVersion(ctx, boundedWaitsVersion, workflow.DefaultVersion, 1) >= 1
		if in.AwaitStart.IsZero() {
			in.AwaitStart = workflow.Now(ctx)
		}
		deadline := in.AwaitStart.Add(in.AwaitConnect)
		progress.Phase, progress.Deadline = "awaiting-connect", &deadline
		report()
		wctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: waitPollSlow + time.Minute,
			HeartbeatTimeout:    in.HeartbeatTimeout,
			Summary:             "wait for devices to connect and report",
		})
		for polls := 1; ; polls++ {
			poll := connectPoll
			if bounded {
				poll = waitPoll(connectPoll, workflow.Now(ctx).Sub(in.AwaitStart))
			}
			wait := min(poll, deadline.Sub(workflow.Now(ctx)))
			if wait < 0 {
				wait = 0
			}
			var st fleet.ConnectProgress
			if err := executeActivity(wctx, Activities.WaitConnected, WaitConnectedInput{Op: in.Op, MaxWait: wait}).Get(ctx, &st); err != nil {
				setState(ctx, "failed", in.Counts)
				dropStagingAfterFailure(ctx, in.Op)
				return res, fmt.Errorf("await connect of %s: %w", in.Op, err)
			}
			progress.Connect = &st
			report()
			if st.Reported >= st.Created || !workflow.Now(ctx).Before(deadline) {
				res.Connect = &st
				break
			}
			if bounded && (polls >= maxWaitPolls || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
				// The wait goes on in a new run, with its start (hence its deadline) in the input.
				logger.Info("continuing the connect wait as new", "op", in.Op, "reported", st.Reported, "created", st.Created)
				return ProvisionResult{}, workflow.NewContinueAsNewError(ctx, ProvisionFleet, in)
			}
		}
	}
	fctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute,
		Summary: "summarize and drop staged rows"})
	var fin FinishProvisionResult
	if err := executeActivity(fctx, Activities.FinishProvision, in.Op).Get(ctx, &fin); err != nil {
		setState(ctx, "failed", in.Counts)
		return res, fmt.Errorf("finish %s: %w", in.Op, err)
	}
	res.InvalidSample = fin.InvalidSample
	progress.Phase = "done"
	report()
	state := "completed"
	if res.Connect != nil && res.Connect.Reported < res.Connect.Created {
		state = "completed-with-missing"
	}
	setState(ctx, state, in.Counts)
	return res, nil
}

// dropStagingVersion is the workflow.GetVersion change id of the clean-up after a failure: from version 1 on,
// a provisioning (or replacement) run that fails drops its staged rows, which hold credential digests, instead
// of leaving them to the health check's daily sweep of stale staging (fleet.StaleStagingAfter).
const dropStagingVersion = "drop-staging-on-failure"

// dropStagingAfterFailure drops op's staged rows after the run has failed (or was cancelled), on a
// disconnected context so that a cancellation does not cancel the clean-up too. The batches have all ended
// by then. If it fails as well, the health check drops the rows once they are a day old.
func dropStagingAfterFailure(ctx workflow.Context, op string) {
	if workflow.GetVersion(ctx, dropStagingVersion, workflow.DefaultVersion, 1) < 1 {
		return // recorded before the clean-up existed
	}
	dctx, cancel := workflow.NewDisconnectedContext(ctx)
	defer cancel()
	dctx = workflow.WithActivityOptions(dctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 10 * time.Second, MaximumAttempts: 5},
		Summary:     "drop the staged rows after the failure"})
	if err := executeActivity(dctx, Activities.FinishProvision, op).Get(dctx, nil); err != nil {
		workflow.GetLogger(ctx).Warn("drop staged rows after a failure; the health check drops them when stale", "op", op, "err", err)
	}
}

func withProvisionDefaults(in ProvisionInput) ProvisionInput {
	if in.BatchSize <= 0 {
		in.BatchSize = DefaultBatchSize
	}
	if in.Window <= 0 {
		in.Window = DefaultWindow
	}
	if in.BatchesPerRun <= 0 {
		in.BatchesPerRun = DefaultBatchesPerRun
	}
	if in.HeartbeatTimeout <= 0 {
		in.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	return in
}

func upsertCounts(ctx workflow.Context, c fleet.ProvisionCounts) {
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Done.ValueSet(c.Created+c.Existing), searchattr.Failed.ValueSet(c.Invalid))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

func setState(ctx workflow.Context, state string, c fleet.ProvisionCounts) {
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(state),
		searchattr.Done.ValueSet(c.Created+c.Existing), searchattr.Failed.ValueSet(c.Invalid))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

// provisionDetails renders the markdown the Temporal UI shows as the workflow's current details.
func provisionDetails(p ProvisionProgress) string {
	s := fmt.Sprintf("**%s** — %s / %s rows\n\ncreated %s · already present %s · invalid %s",
		p.Phase, numfmt.Thousands(p.Counts.Total()), numfmt.Thousands(p.Rows),
		numfmt.Thousands(p.Counts.Created), numfmt.Thousands(p.Counts.Existing), numfmt.Thousands(p.Counts.Invalid))
	if p.Connect != nil {
		s += fmt.Sprintf("\n\nconnected %s · reported %s / %s new devices",
			numfmt.Thousands(p.Connect.Connected), numfmt.Thousands(p.Connect.Reported), numfmt.Thousands(p.Connect.Created))
	}
	return s
}
