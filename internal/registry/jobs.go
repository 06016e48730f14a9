package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
)

// Job is a jobs row.
type Job struct {
	ID         string          `json:"jobId"`
	Kind       fleet.JobKind   `json:"kind"`
	Query      string          `json:"query"`
	Spec       json.RawMessage `json:"spec"`
	State      string          `json:"state"`
	Total      int64           `json:"total"`
	CreatedAt  time.Time       `json:"createdAt"`
	FinishedAt *time.Time      `json:"finishedAt,omitempty"`
}

// JobDevice is a job_devices row for reports.
type JobDevice struct {
	Seq       int64           `json:"seq"`
	DeviceID  string          `json:"deviceId"`
	State     fleet.JobState  `json:"state"`
	Status    int             `json:"status,omitempty"`
	Payload   json.RawMessage `json:"payload,omitempty"`
	Error     string          `json:"error,omitempty"`
	UpdatedAt time.Time       `json:"updatedAt"`
}

// targetsSQL compiles a target query to a statement selecting device ids, with its arguments.
func targetsSQL(q string) (*query.Compiled, error) {
	return query.Compile(q, query.Options{Targets: true})
}

// CountTargets returns how many devices a target query selects (for dry runs and plans).
func (r *Registry) CountTargets(ctx context.Context, q string) (int64, error) {
	c, err := targetsSQL(q)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") t", c.Args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count targets: %w", err)
	}
	return n, nil
}

// CreateJob records a job and freezes its target set (fleet.JobStore): the devices the query selects now,
// numbered in id order, or the given ids (duplicates dropped, order kept; unknown ids kept so that the job
// reports them per device). It returns the number of targets. It is idempotent — the workflow's first step
// calls it, and a retry or a replay after a worker crash must find what the first attempt made: a job whose
// row exists already is left untouched and its total returned. An empty target set is refused with
// fleet.ErrEmptyTarget and leaves nothing behind.
func (r *Registry) CreateJob(ctx context.Context, spec fleet.NewJob) (int64, error) {
	var c *query.Compiled
	if spec.IDs == nil {
		var err error
		if c, err = targetsSQL(spec.Query); err != nil {
			return 0, err
		}
	} else if len(spec.IDs) == 0 {
		return 0, fmt.Errorf("job %s: %w", spec.ID, fleet.ErrEmptyTarget)
	}
	var total int64
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		// ON CONFLICT DO NOTHING waits for a concurrent attempt's transaction, then sees its row.
		tag, err := tx.Exec(ctx, "INSERT INTO jobs (id, kind, query, spec) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
			spec.ID, spec.Kind, spec.Query, string(spec.Spec))
		if err != nil {
			return fmt.Errorf("create job %s: %w", spec.ID, err)
		}
		if tag.RowsAffected() == 0 {
			if err := tx.QueryRow(ctx, "SELECT total FROM jobs WHERE id = $1", spec.ID).Scan(&total); err != nil {
				return fmt.Errorf("load job %s: %w", spec.ID, err)
			}
			return nil
		}
		if c != nil {
			args := append(append([]any(nil), c.Args...), spec.ID)
			tag, err = tx.Exec(ctx, "INSERT INTO job_devices (job_id, seq, device_id) SELECT $"+strconv.Itoa(len(args))+
				"::text, row_number() OVER (ORDER BY id) - 1, id FROM ("+c.SQL+") t", args...)
		} else {
			tag, err = tx.Exec(ctx, `INSERT INTO job_devices (job_id, seq, device_id)
				SELECT $1, row_number() OVER (ORDER BY first) - 1, id FROM (
					SELECT id, min(n) AS first FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) GROUP BY id) t`, spec.ID, spec.IDs)
		}
		if err != nil {
			return fmt.Errorf("freeze targets of job %s: %w", spec.ID, err)
		}
		total = tag.RowsAffected()
		if total == 0 {
			return fmt.Errorf("job %s: %w", spec.ID, fleet.ErrEmptyTarget)
		}
		_, err = tx.Exec(ctx, "UPDATE jobs SET total = $2, state = 'running' WHERE id = $1", spec.ID, total)
		return err
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// GetJob returns a job.
func (r *Registry) GetJob(ctx context.Context, id string) (Job, error) {
	var j Job
	var spec []byte
	err := r.pool.QueryRow(ctx, "SELECT id, kind, query, spec, state, total, created_at, finished_at FROM jobs WHERE id = $1", id).
		Scan(&j.ID, &j.Kind, &j.Query, &spec, &j.State, &j.Total, &j.CreatedAt, &j.FinishedAt)
	if isNoRows(err) {
		return j, fmt.Errorf("job %s: %w", id, fleet.ErrNotFound)
	}
	if err != nil {
		return j, fmt.Errorf("load job %s: %w", id, err)
	}
	j.Spec = spec
	return j, nil
}

// JobTargets returns the targets seq first..last (inclusive) that are still pending.
func (r *Registry) JobTargets(ctx context.Context, job string, first, last int64) ([]fleet.JobTarget, error) {
	rows, err := r.pool.Query(ctx, `SELECT seq, device_id, state FROM job_devices
		WHERE job_id = $1 AND seq BETWEEN $2 AND $3 AND state = 'pending' ORDER BY seq`, job, first, last)
	if err != nil {
		return nil, fmt.Errorf("load targets of job %s: %w", job, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.JobTarget, error) {
		var t fleet.JobTarget
		err := row.Scan(&t.Seq, &t.DeviceID, &t.State)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("load targets of job %s: %w", job, err)
	}
	return out, nil
}

// RecordJobOutcomes stores per-device outcomes in one statement.
func (r *Registry) RecordJobOutcomes(ctx context.Context, job string, outs []fleet.JobOutcome) error {
	if len(outs) == 0 {
		return nil
	}
	seqs := make([]int64, len(outs))
	states := make([]string, len(outs))
	statuses := make([]int32, len(outs))
	payloads := make([]*string, len(outs))
	errs := make([]string, len(outs))
	for i, o := range outs {
		seqs[i], states[i], statuses[i], errs[i] = o.Seq, string(o.State), int32(o.Status), o.Error
		if len(o.Payload) > 0 && json.Valid(o.Payload) {
			s := string(o.Payload)
			payloads[i] = &s
		}
	}
	_, err := r.pool.Exec(ctx, `UPDATE job_devices j SET state = v.state, status = nullif(v.status, 0),
		payload = v.payload::jsonb, error = v.error, updated_at = now()
		FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[]) AS v(seq, state, status, payload, error)
		WHERE j.job_id = $1 AND j.seq = v.seq`, job, seqs, states, statuses, payloads, errs)
	if err != nil {
		return fmt.Errorf("record outcomes of job %s: %w", job, err)
	}
	return nil
}

// JobCounts returns the number of targets per state.
func (r *Registry) JobCounts(ctx context.Context, job string) (map[string]int64, error) {
	rows, err := r.pool.Query(ctx, "SELECT state, count(*) FROM job_devices WHERE job_id = $1 GROUP BY state", job)
	if err != nil {
		return nil, fmt.Errorf("count job %s: %w", job, err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("count job %s: %w", job, err)
		}
		out[s] = n
	}
	return out, rows.Err()
}

// JobTotals counts the job's targets per state (fleet.JobStore); pending targets are not counted.
func (r *Registry) JobTotals(ctx context.Context, job string) (fleet.JobCounts, error) {
	var c fleet.JobCounts
	m, err := r.JobCounts(ctx, job)
	if err != nil {
		return c, err
	}
	for state, n := range m {
		c.AddState(fleet.JobState(state), n)
	}
	return c, nil
}

// CollectAcks marks running targets of a desired job as succeeded once the device reports, for every key of
// the job's patch, the value desired now holds (a key the patch deleted must be absent from reported too). It
// returns what is still waiting.
func (r *Registry) CollectAcks(ctx context.Context, job string, keys []string) (fleet.AckProgress, error) {
	var p fleet.AckProgress
	tag, err := r.pool.Exec(ctx, `UPDATE job_devices j SET state = 'succeeded', updated_at = now()
		FROM devices d WHERE j.job_id = $1 AND j.state = 'running' AND d.id = j.device_id
		AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) k WHERE d.reported -> k IS DISTINCT FROM d.desired -> k)`, job, keys)
	if err != nil {
		return p, fmt.Errorf("collect acknowledgements of job %s: %w", job, err)
	}
	p.Acked = tag.RowsAffected()
	err = r.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE d.online) FROM job_devices j
		JOIN devices d ON d.id = j.device_id WHERE j.job_id = $1 AND j.state = 'running'`, job).Scan(&p.Waiting, &p.WaitingOnline)
	if err != nil {
		return p, fmt.Errorf("collect acknowledgements of job %s: %w", job, err)
	}
	return p, nil
}

// CloseJob ends a job: targets still waiting for an acknowledgement become offline or timed_out (by their
// connection state now), targets never reached become cancelled, and the job's state is recorded.
func (r *Registry) CloseJob(ctx context.Context, job string, state fleet.JobEnd) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE job_devices j SET state = CASE WHEN d.online THEN 'timed_out' ELSE 'offline' END,
			error = CASE WHEN d.online THEN 'did not acknowledge the desired change in time' ELSE 'offline; receives the desired state on reconnect' END,
			updated_at = now() FROM devices d WHERE j.job_id = $1 AND j.state = 'running' AND d.id = j.device_id`, job); err != nil {
			return fmt.Errorf("close job %s: %w", job, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE job_devices SET state = 'cancelled', updated_at = now()
			WHERE job_id = $1 AND state = 'pending'`, job); err != nil {
			return fmt.Errorf("close job %s: %w", job, err)
		}
		_, err := tx.Exec(ctx, "UPDATE jobs SET state = $2, finished_at = now() WHERE id = $1", job, string(state))
		return err
	})
}

// JobDevices lists a job's targets in the given states (all when none), in seq order, at most limit.
func (r *Registry) JobDevices(ctx context.Context, job string, states []fleet.JobState, limit int) ([]JobDevice, error) {
	want := make([]string, len(states)) // never NULL: that would make cardinality() NULL, not 0
	for i, s := range states {
		want[i] = string(s)
	}
	rows, err := r.pool.Query(ctx, `SELECT seq, device_id, state, coalesce(status, 0), payload, error, updated_at
		FROM job_devices WHERE job_id = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2)) ORDER BY seq LIMIT $3`,
		job, want, limit)
	if err != nil {
		return nil, fmt.Errorf("list devices of job %s: %w", job, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (JobDevice, error) {
		var d JobDevice
		var payload []byte
		err := row.Scan(&d.Seq, &d.DeviceID, &d.State, &d.Status, &payload, &d.Error, &d.UpdatedAt)
		d.Payload = payload
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list devices of job %s: %w", job, err)
	}
	return out, nil
}
