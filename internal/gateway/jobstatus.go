package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// Limits of a job status message (devices/{id}/jobs/{jobId}/status). A status is a few words; the limits only
// stop a device from filling the registry with text.
const (
	maxJobStatusBytes = 4 << 10
	maxJobReasonBytes = 1 << 10
)

// jobStatusAttempts is how often a batch of job statuses is written before it is given up: devices get no
// answer to a status (a PUBACK only says the broker has it), so a registry blip must not lose them.
const jobStatusAttempts = 3

// jobStatusMsg is a job status message waiting for the batcher, validated there rather than on the
// publishing client's read goroutine.
type jobStatusMsg struct {
	id, jobID string
	payload   []byte
	at        time.Time
}

// enqueueJobStatus hands a message to the batcher without blocking the device's connection. When the queue is
// full the message is dropped and counted: a status has no response topic to answer 429 on, and progress is
// superseded by the device's next message anyway.
func (g *Gateway) enqueueJobStatus(m jobStatusMsg) {
	select {
	case g.jobQ <- m:
	default:
		g.c.throttled.Add(1)
		g.c.jobStatusDropped.Add(1)
		g.log.Debug("job status queue full; dropping", "device", m.id, "job", m.jobID)
	}
}

// jobStatusLoop writes job statuses in batches, bounded like reported patches (ReportedBatch, ReportedWait).
func (g *Gateway) jobStatusLoop() {
	runBatches(g.ctx, g.jobQ, g.cfg.ReportedBatch, g.cfg.ReportedWait, g.admitJobStatus, g.recordJobStatuses)
}

// admitJobStatus validates a message before it takes a place in a batch; malformed ones are counted and
// dropped (the device gets no answer on this topic).
func (g *Gateway) admitJobStatus(batch []registry.JobStatus, m jobStatusMsg) []registry.JobStatus {
	st, err := parseJobStatus(m.payload)
	if err != nil {
		g.c.malformed.Add(1)
		g.log.Debug("dropping malformed job status", "device", m.id, "job", m.jobID, "err", err)
		return batch
	}
	st.DeviceID, st.JobID, st.At = m.id, m.jobID, m.at
	return append(batch, st)
}

// parseJobStatus decodes {"status": …, "reason": …, "progress": …}. Only status is required; unknown fields
// are ignored, so devices may send more than this gateway understands.
func parseJobStatus(payload []byte) (registry.JobStatus, error) {
	if len(payload) > maxJobStatusBytes {
		return registry.JobStatus{}, fmt.Errorf("payload of %d bytes exceeds %d", len(payload), maxJobStatusBytes)
	}
	var body struct {
		Status   *string  `json:"status"`
		Reason   *string  `json:"reason"`
		Progress *float64 `json:"progress"`
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil || obj == nil {
		return registry.JobStatus{}, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(payload, &body); err != nil {
		return registry.JobStatus{}, fmt.Errorf("decode: %w", err)
	}
	var st registry.JobStatus
	if body.Status == nil || !registry.ValidJobStatus(*body.Status) {
		return st, errors.New(`"status" must be one of downloading, installing, rebooting, succeeded, failed`)
	}
	st.Status = *body.Status
	if body.Reason != nil {
		if len(*body.Reason) > maxJobReasonBytes || !utf8.ValidString(*body.Reason) {
			return registry.JobStatus{}, fmt.Errorf(`"reason" must be valid UTF-8 of at most %d bytes`, maxJobReasonBytes)
		}
		st.Reason = *body.Reason
	}
	if body.Progress != nil {
		p := *body.Progress
		if math.IsNaN(p) || p < 0 || p > 100 {
			return registry.JobStatus{}, errors.New(`"progress" must be a percentage between 0 and 100`)
		}
		st.Progress = int(math.Round(p))
	}
	return st, nil
}

// recordJobStatuses writes one batch, retrying a failed write a few times; the loop does not take new
// messages meanwhile, which queue up and make the next batch larger.
func (g *Gateway) recordJobStatuses(batch []registry.JobStatus) {
	for attempt := 1; ; attempt++ {
		// The write outlives Close's cancellation: the statuses are already acknowledged to the devices.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(g.ctx), g.cfg.StoreTimeout)
		start := time.Now()
		err := g.store.RecordJobStatuses(ctx, batch)
		cancel()
		g.m.jobSeconds.ObserveDuration(time.Since(start)) // every attempt: a retry is another write
		g.m.jobSize.Observe(float64(len(batch)))
		if err == nil {
			g.c.jobStatus.Add(int64(len(batch)))
			return
		}
		g.c.storeErrors.Add(1)
		if attempt == jobStatusAttempts || g.ctx.Err() != nil {
			g.c.jobStatusDropped.Add(int64(len(batch)))
			g.log.Warn("recording job statuses failed; dropping them", "statuses", len(batch), "attempts", attempt, "err", err)
			return
		}
		g.log.Warn("recording job statuses failed; retrying", "statuses", len(batch), "attempt", attempt, "err", err)
		select {
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		case <-g.ctx.Done(): // closing: one last attempt at once
		}
	}
}
