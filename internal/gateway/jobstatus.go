package gateway

import (
	"context"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
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

// admitJobStatus validates a message against the contract (protocol.ParseJobProgress: shape, statuses,
// limits) before it takes a place in a batch; malformed ones are counted and dropped (the device gets no
// answer on this topic).
func (g *Gateway) admitJobStatus(batch []fleet.JobStatus, m jobStatusMsg) []fleet.JobStatus {
	p, err := protocol.ParseJobProgress(m.payload)
	if err != nil {
		g.c.malformed.Add(1)
		g.log.Debug("dropping malformed job status", "device", m.id, "job", m.jobID, "err", err)
		return batch
	}
	return append(batch, fleet.JobStatus{DeviceID: m.id, JobID: m.jobID, Status: p.Status, Reason: p.Reason, Progress: p.Progress, At: m.at})
}

// recordJobStatuses writes one batch, retrying a failed write a few times; the loop does not take new
// messages meanwhile, which queue up and make the next batch larger.
func (g *Gateway) recordJobStatuses(batch []fleet.JobStatus) {
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
