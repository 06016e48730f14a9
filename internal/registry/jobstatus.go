package registry

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// RecordJobStatuses upserts the latest status per (job, device) in one statement per batch.
//
// Only the last status of a key in the batch is written, because one INSERT … ON CONFLICT cannot touch a
// row twice; and a stored status newer than the incoming one (by At) is kept, so a batch that was delayed
// (a retry, another gateway) cannot move a device's job back. Rows are written in key order so that
// concurrent batches lock them in the same order and never deadlock.
func (r *Registry) RecordJobStatuses(ctx context.Context, sts []fleet.JobStatus) error {
	if len(sts) == 0 {
		return nil
	}
	type key struct{ job, device string }
	last := make(map[key]int, len(sts))
	now := time.Now()
	for i, s := range sts {
		switch {
		case s.JobID == "" || s.DeviceID == "":
			return fmt.Errorf("record job statuses: status %d: job and device ids are required", i)
		case !protocol.ValidJobStatus(s.Status):
			return fmt.Errorf("record job statuses: job %s device %s: invalid status %q", s.JobID, s.DeviceID, s.Status)
		case s.Progress < 0 || s.Progress > 100:
			return fmt.Errorf("record job statuses: job %s device %s: progress %d outside 0..100", s.JobID, s.DeviceID, s.Progress)
		}
		last[key{s.JobID, s.DeviceID}] = i
	}
	rows := make([]fleet.JobStatus, 0, len(last))
	for _, i := range last {
		s := sts[i]
		if s.At.IsZero() {
			s.At = now
		}
		rows = append(rows, s)
	}
	slices.SortFunc(rows, func(a, b fleet.JobStatus) int {
		return cmp.Or(cmp.Compare(a.JobID, b.JobID), cmp.Compare(a.DeviceID, b.DeviceID))
	})
	jobs := make([]string, len(rows))
	devices := make([]string, len(rows))
	statuses := make([]string, len(rows))
	reasons := make([]string, len(rows))
	progress := make([]int32, len(rows))
	ats := make([]time.Time, len(rows))
	for i, s := range rows {
		jobs[i], devices[i], statuses[i], reasons[i] = s.JobID, s.DeviceID, s.Status, s.Reason
		progress[i], ats[i] = int32(s.Progress), s.At
	}
	_, err := r.pool.Exec(ctx, `INSERT INTO device_job_status AS s (job_id, device_id, status, reason, progress, updated_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[])
			AS u(job_id, device_id, status, reason, progress, updated_at)
		ORDER BY job_id, device_id
		ON CONFLICT (job_id, device_id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
			progress = EXCLUDED.progress, updated_at = EXCLUDED.updated_at
		WHERE s.updated_at <= EXCLUDED.updated_at`,
		jobs, devices, statuses, reasons, progress, ats)
	if err != nil {
		return fmt.Errorf("record %d job statuses: %w", len(sts), err)
	}
	return nil
}
