package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// twinRequest is a twin/get or twin/reported message waiting for a worker.
type twinRequest struct {
	id      string
	rid     string
	payload []byte
	at      time.Time // when it was queued: one that waited past Config.RequestMaxWait is not served (overdue)
}

// onMessage is the inline subscriber for devices/#. mochi calls it synchronously on the publishing client's
// read goroutine, so it only classifies, counts and queues; registry work happens in the workers.
func (g *Gateway) onMessage(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	// Only device-originated messages are ingested: cloud-to-device traffic (the gateway's own responses and
	// the downlinks it relays) also passes through here.
	s := g.sessions.get(pk.Origin)
	if s == nil {
		return
	}
	g.c.messagesIn.Add(1)

	// A device publishing a cloud-to-device topic (a twin response, say) is malformed traffic too.
	t, err := protocol.Parse(pk.TopicName)
	if err != nil || !t.Kind.FromDevice() || t.Device != s.id {
		// The ACL makes another device's id impossible; never act for another device regardless.
		t.Kind = protocol.KindInvalid
	}
	if t.Kind != protocol.KindTwinReported {
		// A reported patch stamps last_seen itself, in the write that merges it: a "seen" event for it too
		// would be a second write of the same row, under row locks, just when the patch is being merged
		// (every device of a desired job reports within the same second).
		g.events.markSeen(s)
	}
	switch t.Kind {
	case protocol.KindTelemetry:
		g.c.telemetry.Add(1)
	case protocol.KindState:
	case protocol.KindJobStatus:
		g.enqueueJobStatus(jobStatusMsg{id: t.Device, jobID: t.JobID, payload: pk.Payload, at: time.Now()})
	case protocol.KindMethodResponse:
		g.c.methodResponses.Add(1)
		g.onMethodResponse(t.Device, t.Status, t.RequestID, pk.Payload)
	case protocol.KindTwinGet:
		g.enqueue(g.getQ, twinRequest{id: t.Device, rid: t.RequestID, at: time.Now()})
	case protocol.KindTwinReported:
		g.enqueue(g.reportQ[lane(t.Device, len(g.reportQ))], twinRequest{id: t.Device, rid: t.RequestID, payload: pk.Payload, at: time.Now()})
	default:
		g.c.malformed.Add(1)
		g.log.Debug("dropping malformed device message", "device", s.id, "topic", pk.TopicName)
	}
}

// enqueue hands a request to the workers, or answers 429 at once when they are saturated: blocking here
// would stall the device's connection, and silently dropping would leave it waiting for a timeout.
func (g *Gateway) enqueue(q chan twinRequest, r twinRequest) {
	select {
	case q <- r:
	default:
		g.c.throttled.Add(1)
		g.respondError(r.id, 429, r.rid, "gateway busy, retry later")
	}
}

// overdue answers r 503 at once, without serving it, when it waited in its queue longer than
// Config.RequestMaxWait (docs/architecture.md, "Ingest lanes": admission for requests). Its device has
// stopped waiting by then and sends it again (the device SDK waits 10 s for an answer): serving it would
// spend a registry batch on an answer nobody reads, ahead of the requests queued behind it — the device's
// own retry among them. In a reconnect storm that is how a lane fell minutes behind, writing patches whose
// devices had given up on them while their retries waited or were refused.
func (g *Gateway) overdue(r twinRequest) bool {
	if g.cfg.RequestMaxWait < 0 || r.at.IsZero() || time.Since(r.at) <= g.cfg.RequestMaxWait {
		return false
	}
	g.c.overdue.Add(1)
	g.respondError(r.id, 503, r.rid, "gateway busy, retry later")
	return true
}

// lane picks one of n ingest lanes for a device (FNV-1a of its id): the same device always takes the same
// lane, which keeps its patches in order.
func lane(id string, n int) int {
	if n <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// twinGetLoop answers twin/get requests with the device's desired and reported documents. With a store that
// reads many twins at once, it takes every request queued while it was busy (up to ReportedBatch) into one
// read, so batches grow with load and a lone request waits for nobody.
func (g *Gateway) twinGetLoop() {
	bg, batched := g.store.(TwinBatchGetter)
	batch := make([]twinRequest, 0, g.cfg.ReportedBatch)
	for {
		select {
		case r := <-g.getQ:
			if g.overdue(r) {
				continue
			}
			if !batched {
				g.serveTwinGet(r)
				continue
			}
			batch = append(batch[:0], r)
		fill:
			for len(batch) < g.cfg.ReportedBatch {
				select {
				case r := <-g.getQ:
					if !g.overdue(r) {
						batch = append(batch, r)
					}
				default:
					break fill
				}
			}
			if len(batch) == 1 {
				g.serveTwinGet(batch[0])
				continue
			}
			g.serveTwinGets(bg, batch)
			clear(batch)
		case <-g.ctx.Done():
			return
		}
	}
}

// serveTwinGets answers a batch of twin/get requests from one registry read.
func (g *Gateway) serveTwinGets(bg TwinBatchGetter, batch []twinRequest) {
	ids := make([]string, len(batch))
	for i, r := range batch {
		ids[i] = r.id
	}
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.StoreTimeout)
	twins, err := bg.GetTwins(ctx, ids)
	cancel()
	if err != nil {
		g.c.storeErrors.Add(1)
		g.log.Warn("twin get failed", "devices", len(ids), "err", err)
		for _, r := range batch {
			g.respondError(r.id, 503, r.rid, "registry unavailable, retry later")
		}
		return
	}
	for _, r := range batch {
		t, ok := twins[r.id]
		if !ok {
			g.respondError(r.id, 404, r.rid, "device not found")
			continue
		}
		g.answerTwin(r, t)
	}
}

func (g *Gateway) serveTwinGet(r twinRequest) {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.StoreTimeout)
	t, err := g.store.GetTwin(ctx, r.id)
	cancel()
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		g.respondError(r.id, 404, r.rid, "device not found")
		return
	case err != nil:
		g.c.storeErrors.Add(1)
		g.log.Warn("twin get failed", "device", r.id, "err", err)
		g.respondError(r.id, 503, r.rid, "registry unavailable, retry later")
		return
	}
	g.answerTwin(r, t)
}

// answerTwin sends a device its twin.
func (g *Gateway) answerTwin(r twinRequest, t twin.Twin) {
	body, err := json.Marshal(t.Properties)
	if err != nil {
		g.log.Error("encoding twin failed", "device", r.id, "err", err)
		g.respondError(r.id, 500, r.rid, "stored twin is not valid JSON")
		return
	}
	g.c.twinGets.Add(1)
	g.respond(r.id, 200, r.rid, body)
}

// reportedLoop collects the reported patches of one lane into batches (up to ReportedBatch, waiting at most
// ReportedWait for the batch to fill) and merges each batch with one ApplyReported call. While a batch is
// being written new patches queue up, so batches grow with load, which is what keeps Postgres at ~50k rows/s
// (measured: a batched merge of 10k rows takes 0.18 s).
func (g *Gateway) reportedLoop(q chan twinRequest) {
	lm := &laneMemo{}
	admit := func(batch []twinRequest, r twinRequest) []twinRequest { return g.admitReported(lm, batch, r) }
	runBatches(g.ctx, q, g.cfg.ReportedBatch, g.cfg.ReportedWait, admit, g.applyReported)
}

// runBatches takes items from q and hands them to flush in batches of at most size: the first item of a
// batch waits at most wait for company, and while flush runs new items queue up, so batches grow with load.
// admit validates and converts an item into the batch, or drops it (answering it itself). When ctx ends,
// what is still queued is flushed too: the broker is closed by then, so the queue can only shrink.
func runBatches[Q, B any](ctx context.Context, q <-chan Q, size int, wait time.Duration,
	admit func([]B, Q) []B, flush func([]B)) {
	batch := make([]B, 0, size)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var r Q
		select {
		case r = <-q:
		case <-ctx.Done():
			drainBatches(q, batch, size, admit, flush)
			return
		}
		batch = admit(batch, r)
		timer.Reset(wait)
	fill:
		for len(batch) < size {
			select {
			case r = <-q:
				batch = admit(batch, r)
			case <-timer.C:
				break fill
			case <-ctx.Done():
				break fill
			}
		}
		timer.Stop()
		if len(batch) > 0 {
			flush(batch)
		}
		clear(batch)
		batch = batch[:0]
	}
}

// drainBatches flushes batch and everything still queued, without waiting for more.
func drainBatches[Q, B any](q <-chan Q, batch []B, size int, admit func([]B, Q) []B, flush func([]B)) {
	for {
		select {
		case r := <-q:
			batch = admit(batch, r)
			if len(batch) < size {
				continue
			}
		default:
		}
		if len(batch) == 0 {
			return
		}
		flush(batch)
		clear(batch)
		batch = batch[:0]
	}
}

// admitReported validates a patch before it takes a place in a batch: malformed input, and a patch the
// metadata scheme refuses, is answered 400 here and never reaches the registry; an overdue one 503.
func (g *Gateway) admitReported(lm *laneMemo, batch []twinRequest, r twinRequest) []twinRequest {
	if g.overdue(r) {
		return batch
	}
	var err error
	var patch map[string]any
	tooLarge := len(r.payload) > twin.MaxReportedBytes
	if tooLarge {
		err = &twin.LimitError{Section: twin.Reported, What: "size", Limit: twin.MaxReportedBytes, Actual: len(r.payload)}
	} else {
		patch, err = twin.ParseObject(twin.Reported, r.payload)
	}
	if err != nil {
		g.c.malformed.Add(1)
		g.c.reportedFailed.Add(1)
		if tooLarge {
			g.c.refusedTooLarge.Add(1)
		} else {
			g.c.refusedMalformed.Add(1)
		}
		g.respondError(r.id, 400, r.rid, err.Error())
		g.markSeen(r.id)
		return batch
	}
	if !g.checkReported(lm, r, patch) {
		g.markSeen(r.id)
		return batch
	}
	return append(batch, r)
}

// markSeen stamps the device's activity for a report that is not written (whose merge would have stamped it).
func (g *Gateway) markSeen(id string) {
	if s := g.sessions.get(id); s != nil {
		g.events.markSeen(s)
	}
}

func (g *Gateway) applyReported(batch []twinRequest) {
	patches := make([]fleet.ReportedPatch, len(batch))
	for i, r := range batch {
		patches[i] = fleet.ReportedPatch{DeviceID: r.id, RequestID: r.rid, Patch: r.payload}
	}
	// Requests already queued when the gateway closes are still written: the devices were told nothing
	// yet, and a short bounded write is better than losing reported state.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(g.ctx), g.cfg.StoreTimeout)
	start := time.Now()
	results, err := g.store.ApplyReported(ctx, patches)
	cancel()
	took := time.Since(start)
	g.c.ingestBatches.Add(1)
	g.c.lastBatchSize.Store(int64(len(batch)))
	g.c.lastBatchLatency.Store(int64(took))
	g.m.reportedSeconds.ObserveDuration(took)
	g.m.reportedSize.Observe(float64(len(batch)))
	if err == nil && len(results) != len(batch) {
		err = fmt.Errorf("registry returned %d results for %d patches", len(results), len(batch))
	}
	if err != nil {
		g.c.storeErrors.Add(1)
		g.c.reportedFailed.Add(int64(len(batch)))
		g.log.Warn("applying reported patches failed", "patches", len(batch), "err", err)
		for _, r := range batch {
			g.respondError(r.id, 503, r.rid, "registry unavailable, retry later")
		}
		return
	}
	for i, r := range batch {
		res := results[i]
		if res.Err == nil {
			g.c.reportedApplied.Add(1)
			g.respond(r.id, 204, r.rid, protocol.ReportedAckPayload(res.Version))
			continue
		}
		g.c.reportedFailed.Add(1)
		var limit *twin.LimitError
		switch {
		case errors.Is(res.Err, fleet.ErrNotFound):
			g.c.refusedUnknown.Add(1)
			g.respondError(r.id, 404, r.rid, "device not found")
		case errors.Is(res.Err, fleet.ErrNotActive):
			g.c.refusedInactive.Add(1)
			g.respondError(r.id, 403, r.rid, "device is not active")
		case errors.As(res.Err, &limit), errors.Is(res.Err, twin.ErrInvalidJSON):
			g.c.malformed.Add(1)
			g.c.refusedMalformed.Add(1)
			g.respondError(r.id, 400, r.rid, res.Err.Error())
		default:
			g.log.Warn("reported patch failed", "device", r.id, "err", res.Err)
			g.respondError(r.id, 500, r.rid, "internal error")
		}
	}
}

func (g *Gateway) respond(id string, status int, rid string, body []byte) {
	if err := g.server.Publish(protocol.TwinResponseTopic(id, status, rid), body, false, 1); err != nil {
		g.log.Debug("publishing twin response failed", "device", id, "err", err)
	}
}

func (g *Gateway) respondError(id string, status int, rid, msg string) {
	g.respond(id, status, rid, protocol.ErrorPayload(msg))
}
