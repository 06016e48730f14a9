package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

// Reported patches are checked against the metadata scheme's reported-properties schema before they take a
// place in a batch (docs/architecture.md, "Metadata scheme"): the patch alone, as scheme.CheckReportedPatch
// words it, so that the registry's merge stays what it was and a device is never refused for what an older
// report left in its twin. The gateway holds the scheme in force and reads it again when the registry
// announces another version (fleet.SchemeChanged) or its change listener reconnects.

// schemeState is the scheme in force as ingest sees it. A nil *schemeState means it was never read: reported
// patches are then answered 503, as when the registry cannot be reached, rather than let through unchecked.
type schemeState struct {
	s       *scheme.Scheme // nil: no scheme in force, or one without a reported part
	version int64          // the version in force, 0 when none
}

// reportMemoMax and reportMemoBytes bound the verdicts remembered by each ingest lane: patches of up to
// reportMemoBytes, at most reportMemoMax of them (1 MiB a lane at worst). A fleet sends the same few small patches
// (a desired value acknowledged, a firmware version); a larger one (a device's capabilities, unique to it)
// is checked each time, since remembering it would only churn memory.
const (
	reportMemoMax   = 4096
	reportMemoBytes = 256
)

// reportNoteEvery is how often a device whose reports the scheme refuses gets the refusal on its timeline: a
// device that keeps sending a refused value says nothing new with its next thousand refusals.
const reportNoteEvery = time.Hour

// loadScheme reads the scheme in force and makes it the one ingest checks against.
func (g *Gateway) loadScheme(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.StoreTimeout)
	s, err := g.store.ActiveScheme(ctx)
	cancel()
	if err != nil {
		g.c.storeErrors.Add(1)
		return err
	}
	st := &schemeState{}
	if s != nil {
		st.version = s.Version
		if s.HasReported() {
			st.s = s
		}
	}
	prev := g.scheme.Swap(st)
	if prev == nil || prev.version != st.version || (prev.s == nil) != (st.s == nil) {
		g.log.Info("metadata scheme in force", "version", st.version, "reported_schema", st.s != nil)
	}
	return nil
}

// reloadScheme asks schemeLoop to read the scheme again; it never blocks (the listener's goroutine calls it).
func (g *Gateway) reloadScheme() {
	select {
	case g.schemeReload <- struct{}{}:
	default:
	}
}

// schemeLoop reads the scheme whenever reloadScheme asks, retrying a failed read with a growing delay: until
// a read succeeds the previous scheme stays in force.
func (g *Gateway) schemeLoop() {
	for {
		select {
		case <-g.schemeReload:
		case <-g.ctx.Done():
			return
		}
		for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
			err := g.loadScheme(g.ctx)
			if err == nil || g.ctx.Err() != nil {
				break
			}
			g.log.Warn("reading the metadata scheme failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-g.ctx.Done():
				return
			}
		}
	}
}

// laneMemo is an ingest lane's remembered verdicts and the scheme they belong to; only the lane's goroutine
// uses it (a scheme.Memo is not safe for concurrent use).
type laneMemo struct {
	memo *scheme.Memo
	of   *scheme.Scheme
}

// checkReported checks a well-formed reported patch (patch: as twin.ParseObject decoded it, which this takes
// over) against the scheme in force and answers the device itself when it is refused (false). It runs on one
// ingest lane's goroutine, which owns lm.
func (g *Gateway) checkReported(lm *laneMemo, r twinRequest, patch map[string]any) bool {
	st := g.scheme.Load()
	if st == nil {
		g.c.reportedFailed.Add(1)
		g.respondError(r.id, 503, r.rid, "registry unavailable, retry later")
		return false
	}
	if st.s == nil {
		return true
	}
	memo := len(r.payload) <= reportMemoBytes
	if memo && lm.of != st.s {
		lm.memo, lm.of = st.s.NewReportedPatchMemo(reportMemoMax), st.s
	}
	known, err := false, error(nil)
	if memo {
		known, err = lm.memo.Verdict(r.payload)
	}
	if !known {
		err = st.s.CheckReportedPatchValue(patch)
		if memo {
			lm.memo.Remember(r.payload, err)
		}
	}
	if err == nil {
		return true
	}
	var se *scheme.Error
	var vs []protocol.PathRule
	if errors.As(err, &se) {
		for _, v := range se.Violations {
			vs = append(vs, protocol.PathRule{Path: v.Path, Rule: v.Rule})
		}
	}
	g.c.reportedFailed.Add(1)
	g.c.refusedScheme.Add(1)
	g.respond(r.id, protocol.StatusSchemeViolation, r.rid, protocol.SchemeViolationPayload(err.Error(), vs))
	now := time.Now()
	if g.reportNotes.due(r.id, now) {
		g.events.add(fleet.ConnEvent{DeviceID: r.id, Kind: fleet.ConnReportRefused, At: now, Reason: err.Error()})
	}
	return false
}
