package device

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// ReportJobStatus publishes a job's progress on devices/{id}/jobs/{jobID}/status at QoS 1 and waits for the
// PUBACK, which means the gateway has the message (it reaches the registry in its next batch; there is no
// response). status is one of downloading, installing, rebooting, succeeded, failed — the gateway drops
// anything else; reason says why a job failed and may be empty; progress is a percentage (0 = not given).
// Without a deadline in ctx the wait is bounded by RequestTimeout.
func (d *Device) ReportJobStatus(ctx context.Context, jobID, status, reason string, progress int) error {
	if err := protocol.ValidateJobID(jobID); err != nil {
		return fmt.Errorf("job status: %w", err)
	}
	if status == "" {
		return fmt.Errorf("job %s: status is required", jobID)
	}
	if progress < 0 || progress > 100 {
		return fmt.Errorf("job %s: progress %d outside 0..100", jobID, progress)
	}
	// Not JobProgress.Payload, which refuses statuses outside the contract: the SDK leaves that check to
	// the gateway, as it always has.
	body, err := json.Marshal(protocol.JobProgress{Status: status, Reason: reason, Progress: progress})
	if err != nil {
		return fmt.Errorf("job %s: %w", jobID, err)
	}
	c := d.paho()
	if c == nil || !c.IsConnectionOpen() {
		return fmt.Errorf("job %s: %w", jobID, ErrNotConnected)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cfg.RequestTimeout)
		defer cancel()
	}
	tok := c.Publish(protocol.JobStatusTopic(d.cfg.ID, jobID), 1, false, body)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("job %s: publish status: %w", jobID, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("job %s: publish status: %w", jobID, ctx.Err())
	}
}
