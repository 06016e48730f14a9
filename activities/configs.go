package activities

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/workflows"
)

// configMinGap is the least time between two reconcile passes of one configuration: wake-ups come once per
// registry statement, and a busy fleet's gateways write connection batches several times a second.
const configMinGap = 500 * time.Millisecond

// configRepushAfter is how long a connected device may leave a configuration's write unacknowledged before
// its desired document is pushed again (as a rollout's observation does).
const configRepushAfter = 20 * time.Second

// Acknowledgement polling: every ackPollEvery while connected devices owe an acknowledgement of a write made
// in the last configFastFor (they answer within milliseconds), then every configSlowAckPoll, so that a device
// that never acknowledges does not keep the registry busy four times a second.
const (
	configFastFor     = 30 * time.Second
	configSlowAckPoll = 5 * time.Second
)

// ConfigSave records a configuration's spec and state at a version (docs/architecture.md, "Declarative
// configurations"). A target or metric query that does not compile is not retried.
func (a *Activities) ConfigSave(ctx context.Context, in workflows.ConfigSaveInput) (int64, error) {
	if a.Configs == nil {
		return 0, errNoStore("configuration")
	}
	if err := a.Configs.SaveConfig(ctx, in.Spec, in.Version, in.State); err != nil {
		if isPermanent(err) {
			return 0, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, err)
		}
		return 0, err
	}
	return in.Version, nil
}

// isPermanent reports errors a retry cannot fix: a spec or query the registry refuses as written.
func isPermanent(err error) bool {
	var (
		syntax   *query.SyntaxError
		semantic *query.SemanticError
	)
	return errors.As(err, &syntax) || errors.As(err, &semantic) || errors.Is(err, fleet.ErrUnknownGroup) ||
		errors.Is(err, fleet.ErrInvalidConfig)
}

// ConfigReconcile is one pass of a configuration: for RunFor it brings the devices behind up to date in
// batches (each written with its record in one transaction, then pushed) and collects acknowledgements. It
// looks for devices behind at the start, when the registry announces an insert, a retag or a configuration
// change, and every PollEvery; a connection notice only makes it collect acknowledgements, which it also
// polls while connected devices owe them. It heartbeats throughout, so an update that cancels the
// pass stops it within a heartbeat, and returns the configuration's counts at the end.
func (a *Activities) ConfigReconcile(ctx context.Context, in workflows.ConfigReconcileInput) (workflows.ConfigReconcileResult, error) {
	var res workflows.ConfigReconcileResult
	if a.Configs == nil {
		return res, errNoStore("configuration")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	deadline := time.Now().Add(in.RunFor)
	var lastWrite, lastScan time.Time
	scan := true // look for devices behind: at the start, on a change notice, and every PollEvery
	for {
		var changed, connected <-chan struct{}
		if a.Changes != nil {
			// Taken before the round, so that a change during it wakes the next one.
			changed, connected = a.Changes.Changed(), a.Changes.Connected()
		}
		roundStart := time.Now()
		for scan {
			lastScan = time.Now()
			r, err := a.Configs.ReconcileConfig(ctx, in.Name, in.BatchSize)
			if err != nil {
				return res, err
			}
			res.Written += int64(r.Written)
			if r.Written > 0 {
				lastWrite = time.Now()
			}
			if _, err := a.push(ctx, r.Pushes); err != nil {
				activityLogger(ctx).Warn("desired push incomplete; devices catch up on reconnect", "configuration", in.Name, "err", err)
			}
			if r.Handled < in.BatchSize || ctx.Err() != nil {
				break
			}
		}
		_, waitingOnline, err := a.Configs.CollectConfigAcks(ctx, in.Name)
		if err != nil {
			return res, err
		}
		if waitingOnline > 0 {
			again, err := a.Configs.ConfigRepush(ctx, in.Name, configRepushAfter, in.BatchSize)
			if err != nil {
				return res, err
			}
			if _, err := a.push(ctx, again); err != nil {
				activityLogger(ctx).Warn("desired push incomplete; devices catch up on reconnect", "configuration", in.Name, "err", err)
			}
		}
		if !time.Now().Before(deadline) {
			break
		}
		nextScan := lastScan.Add(in.PollEvery)
		wait := time.Until(nextScan)
		switch {
		case waitingOnline > 0 && time.Since(lastWrite) < configFastFor:
			wait = min(wait, ackPollEvery)
		case waitingOnline > 0:
			wait = min(wait, configSlowAckPoll)
		}
		wait = max(0, min(wait, time.Until(deadline)))
		stopping, woken := false, false
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-workerStopping(ctx):
			stopping = true
		case <-changed:
			// Something may have put devices behind.
			woken = true
		case <-connected:
			// Connections bring acknowledgements, not devices behind: unless a change came too, the round
			// collects acknowledgements only.
			woken = true
		case <-time.After(wait):
		}
		if stopping {
			break
		}
		if woken {
			// Let a burst of statements settle into one round.
			if gap := configMinGap - time.Since(roundStart); gap > 0 {
				time.Sleep(min(gap, time.Until(deadline)))
			}
		}
		scan = !time.Now().Before(nextScan) || isClosed(changed)
	}
	var err error
	res.Counts, err = a.Configs.ConfigCounts(ctx, in.Name)
	return res, err
}

// isClosed reports whether a wake-up channel has fired (a nil channel never has).
func isClosed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ConfigDelete removes a configuration from the registry, leaving devices as they are.
func (a *Activities) ConfigDelete(ctx context.Context, name string) (string, error) {
	if a.Configs == nil {
		return "", errNoStore("configuration")
	}
	return name, a.Configs.DeleteConfig(ctx, name)
}
