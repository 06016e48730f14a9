package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/twin"
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

// CountTargets returns how many devices a target query selects (for dry runs and plans).
func (r *Registry) CountTargets(ctx context.Context, q string) (int64, error) {
	c, err := r.targetsSQL(ctx, r.pool, q)
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
		if c, err = r.targetsSQL(ctx, r.pool, spec.Query); err != nil {
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
			if err := recordGroupUses(ctx, tx, "job", spec.ID, c.Groups); err != nil {
				return err
			}
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

// JobTargets returns the targets seq first..last (inclusive) that are not finished: pending, or dispatched
// by an earlier attempt.
func (r *Registry) JobTargets(ctx context.Context, job string, first, last int64) ([]fleet.JobTarget, error) {
	rows, err := r.pool.Query(ctx, `SELECT seq, device_id, state FROM job_devices
		WHERE job_id = $1 AND seq BETWEEN $2 AND $3 AND state IN ('pending', 'dispatched') ORDER BY seq`, job, first, last)
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

// RecordJobOutcomes stores per-device outcomes in one statement; targets that already have a final outcome
// keep it (fleet.JobStore).
func (r *Registry) RecordJobOutcomes(ctx context.Context, job string, outs []fleet.JobOutcome) error {
	_, err := recordJobOutcomes(ctx, r.pool, job, outs)
	return err
}

// recordJobOutcomes is RecordJobOutcomes on q (the pool, or the transaction that made the writes the outcomes
// describe); it returns how many targets it updated.
func recordJobOutcomes(ctx context.Context, q Execer, job string, outs []fleet.JobOutcome) (int64, error) {
	if len(outs) == 0 {
		return 0, nil
	}
	tag, err := q.Exec(ctx, jobOutcomesSQL, jobOutcomesArgs(job, outs)...)
	if err != nil {
		return 0, fmt.Errorf("record outcomes of job %s: %w", job, err)
	}
	return tag.RowsAffected(), nil
}

// jobOutcomesSQL records outcomes of targets still pending or dispatched; its arguments come from
// jobOutcomesArgs.
const jobOutcomesSQL = `UPDATE job_devices j SET state = v.state, status = nullif(v.status, 0),
		payload = v.payload::jsonb, error = v.error, updated_at = now()
		FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[]) AS v(seq, state, status, payload, error)
		WHERE j.job_id = $1 AND j.seq = v.seq AND j.state IN ('pending', 'dispatched')`

func jobOutcomesArgs(job string, outs []fleet.JobOutcome) []any {
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
	return []any{job, seqs, states, statuses, payloads, errs}
}

// ClaimJobTargets marks pending targets as dispatched before their method is sent (fleet.JobStore). One
// statement: two attempts racing for a target cannot both claim it.
func (r *Registry) ClaimJobTargets(ctx context.Context, job string, seqs []int64) ([]int64, error) {
	if len(seqs) == 0 {
		return nil, nil
	}
	rows, err := r.pool.Query(ctx, `UPDATE job_devices SET state = 'dispatched', updated_at = now()
		WHERE job_id = $1 AND seq = ANY($2) AND state = 'pending' RETURNING seq`, job, seqs)
	if err != nil {
		return nil, fmt.Errorf("claim targets of job %s: %w", job, err)
	}
	claimed, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("claim targets of job %s: %w", job, err)
	}
	slices.Sort(claimed)
	return claimed, nil
}

// errTargetsMoved rolls back a batch transaction whose targets another attempt finished meanwhile; the retry
// finds them finished and skips them.
var errTargetsMoved = errors.New("targets were finished by another attempt of the batch meanwhile; retrying")

// PatchJobTargets writes a desired or tags batch and its outcomes in one transaction (fleet.JobStore).
//
// A desired batch holds no row lock while the worker works (as ApplyReported, docs/architecture.md, "Ingest
// lanes"): the twins are read without locks, merged in Go, the outcomes decided, and then one round trip,
// one implicit transaction, locks the devices in id order, writes each where its desired version is still the
// one read, records the timeline's events and the outcomes — and rolls all of it back, to be read and merged
// again, if any device was written meanwhile or any target was finished by another attempt. A batch that
// loses patchJobTries rounds, and a tags batch (whose merge is checked against the metadata scheme in the
// writing transaction), takes the locks first (patchJobTargetsLocked). The locks held across the worker's
// round trips were held as long as the worker waited for a core, and a job's batches run exactly when its
// devices' reported patches, which need the same rows, come in.
func (r *Registry) PatchJobTargets(ctx context.Context, job string, section twin.Section, targets []fleet.JobTarget, patch []byte,
	outcomes fleet.JobOutcomesFunc[fleet.PatchResult]) error {
	var todo []fleet.JobTarget
	for _, t := range targets {
		if t.State == fleet.JobPending {
			todo = append(todo, t)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if section == twin.Desired {
		for range patchJobTries {
			err := r.patchJobTargetsOnce(ctx, job, todo, patch, outcomes)
			if !errors.Is(err, errTwinsMoved) {
				return err
			}
		}
	}
	return r.patchJobTargetsLocked(ctx, job, section, todo, patch, outcomes)
}

// patchJobTries bounds the optimistic rounds of a desired batch: only a device written by someone else
// between the read and the write (an operator's update, another job) needs another.
const patchJobTries = 3

// errTwinsMoved rolls back an optimistic job batch one of whose devices was written between its read and its
// write; the batch is read and merged again.
var errTwinsMoved = errors.New("devices were written meanwhile; merging again")

// The SQLSTATE of fleetflow_require (migration 027) and the messages of patchJobTargetsOnce's checks.
const (
	requireFailed         = "FF001"
	requireTwinsUnmoved   = "job batch: devices written meanwhile"
	requireTargetsPending = "job batch: targets finished meanwhile"
)

// patchJobTargetsOnce is one optimistic round of a desired batch (see PatchJobTargets).
func (r *Registry) patchJobTargetsOnce(ctx context.Context, job string, todo []fleet.JobTarget, patch []byte,
	outcomes fleet.JobOutcomesFunc[fleet.PatchResult]) error {
	results := make([]fleet.PatchResult, len(todo))
	index := make(map[string]int, len(todo))
	ids := make([]string, len(todo))
	for i, t := range todo {
		if _, dup := index[t.DeviceID]; dup {
			return fmt.Errorf("job %s: patch twins: device %s appears twice in one batch", job, t.DeviceID)
		}
		index[t.DeviceID] = i
		ids[i] = t.DeviceID
		results[i] = fleet.PatchResult{DeviceID: t.DeviceID, Err: notFound(t.DeviceID)}
	}
	rows, err := r.pool.Query(ctx, "SELECT id, status, desired, desired_version, online FROM devices WHERE id = ANY($1) ORDER BY id", ids)
	if err != nil {
		return fmt.Errorf("job %s: read devices: %w", job, err)
	}
	var wIDs, wDocs []string
	var wBases []int64
	var changes []twinChange
	for rows.Next() {
		var id, status string
		var doc []byte
		var version int64
		var online bool
		if err := rows.Scan(&id, &status, &doc, &version, &online); err != nil {
			rows.Close()
			return fmt.Errorf("job %s: read devices: %w", job, err)
		}
		res := &results[index[id]]
		merged, ok := mergeDevicePatch(twin.Desired, id, status, online, doc, patch, res)
		if !ok {
			continue
		}
		// The write happens only where the version is still the one read, so the new version is known.
		res.Version = version + 1
		wIDs, wDocs, wBases = append(wIDs, id), append(wDocs, string(merged)), append(wBases, version)
		changes = append(changes, twinChange{id: id, version: res.Version, patch: patch})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("job %s: read devices: %w", job, err)
	}
	outs, err := outcomes(todo, results)
	if err != nil {
		return err
	}
	b := &pgx.Batch{}
	if len(wIDs) > 0 {
		// Locks in id order first, as every batch writer of devices takes them; the write's snapshot, taken
		// after them, sees every write that came first.
		b.Queue(`SELECT 1 FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE`, wIDs)
		b.Queue(`WITH w AS (
				UPDATE devices d SET desired = u.doc::jsonb, desired_version = d.desired_version + 1,
					twin_version = d.twin_version + 1, updated_at = now()
				FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(id, doc, base)
				WHERE d.id = u.id AND d.desired_version = u.base AND d.status <> '`+statusRetired+`'
				RETURNING 1)
			SELECT fleetflow_require((SELECT count(*) FROM w) = $4, $5)`, wIDs, wDocs, wBases, int64(len(wIDs)), requireTwinsUnmoved)
		sql, args := twinChangesQuery(twin.Desired, changes)
		b.Queue(sql, args...)
	}
	if len(outs) > 0 {
		args := append(jobOutcomesArgs(job, outs), int64(len(outs)), requireTargetsPending)
		b.Queue(`WITH o AS (`+jobOutcomesSQL+` RETURNING 1) SELECT fleetflow_require((SELECT count(*) FROM o) = $7, $8)`, args...)
	}
	err = r.pool.SendBatch(ctx, b).Close()
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pgErr) && pgErr.Code == requireFailed && pgErr.Message == requireTwinsUnmoved:
		return errTwinsMoved
	case errors.As(err, &pgErr) && pgErr.Code == requireFailed && pgErr.Message == requireTargetsPending:
		return fmt.Errorf("job %s: %w", job, errTargetsMoved)
	default:
		return fmt.Errorf("job %s: write batch: %w", job, err)
	}
}

// patchJobTargetsLocked writes a batch with the devices locked from the read to the commit: the devices
// first (in patchTwinsTx, id order), then the targets' rows, the order RetireJobTargets and every other
// writer of both tables use, so batches and decommissions cannot deadlock.
func (r *Registry) patchJobTargetsLocked(ctx context.Context, job string, section twin.Section, todo []fleet.JobTarget, patch []byte,
	outcomes fleet.JobOutcomesFunc[fleet.PatchResult]) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		patches := make([]fleet.DevicePatch, len(todo))
		for i, t := range todo {
			patches[i] = fleet.DevicePatch{DeviceID: t.DeviceID, Patch: patch}
		}
		results, err := patchTwinsTx(ctx, tx, section, patches)
		if err != nil {
			return fmt.Errorf("job %s: %w", job, err)
		}
		outs, err := outcomes(todo, results)
		if err != nil {
			return err
		}
		return recordAll(ctx, tx, job, outs)
	})
}

// recordAll records outcomes in tx and fails (rolling the batch back) unless every one of them was still
// pending or dispatched.
func recordAll(ctx context.Context, tx pgx.Tx, job string, outs []fleet.JobOutcome) error {
	n, err := recordJobOutcomes(ctx, tx, job, outs)
	if err != nil {
		return err
	}
	if n != int64(len(outs)) {
		return fmt.Errorf("job %s: %d of %d %w", job, int64(len(outs))-n, len(outs), errTargetsMoved)
	}
	return nil
}

// JobRangeTotals counts the targets seq first..last per state (fleet.JobStore).
func (r *Registry) JobRangeTotals(ctx context.Context, job string, first, last int64) (fleet.JobCounts, error) {
	var c fleet.JobCounts
	rows, err := r.pool.Query(ctx, `SELECT state, count(*) FROM job_devices WHERE job_id = $1 AND seq BETWEEN $2 AND $3
		GROUP BY state`, job, first, last)
	if err != nil {
		return c, fmt.Errorf("count targets %d–%d of job %s: %w", first, last, job, err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return c, fmt.Errorf("count targets %d–%d of job %s: %w", first, last, job, err)
		}
		c.AddState(fleet.JobState(s), n)
	}
	return c, rows.Err()
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
		// A rotation's running targets were sent their secret and did not connect with it within the grace:
		// whatever their connection, they missed it and keep both slots (docs/architecture.md, "Credential
		// rotation").
		if _, err := tx.Exec(ctx, `UPDATE job_devices j SET
			state = CASE WHEN jb.kind = 'rotate_credentials' OR d.online THEN 'timed_out' ELSE 'offline' END,
			error = CASE WHEN jb.kind = 'rotate_credentials' AND j.cred_cert THEN $3 WHEN jb.kind = 'rotate_credentials' THEN $2
				WHEN d.online THEN 'did not acknowledge the desired change in time' ELSE 'offline; receives the desired state on reconnect' END,
			updated_at = now() FROM devices d, jobs jb
			WHERE j.job_id = $1 AND j.state = 'running' AND d.id = j.device_id AND jb.id = j.job_id`, job, fleet.RotateMissed,
			fleet.RotateMissedCertificate); err != nil {
			return fmt.Errorf("close job %s: %w", job, err)
		}
		// A method sent by an attempt that stopped before it recorded the answer: it is never sent again.
		if _, err := tx.Exec(ctx, `UPDATE job_devices SET state = 'timed_out', error = $2, updated_at = now()
			WHERE job_id = $1 AND state = 'dispatched'`, job, fleet.LostAnswerReason); err != nil {
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

// TargetTags returns the text values of the named top-level tags of the devices among ids that have them
// (fleet.JobStore): what their maintenance windows are read from.
func (r *Registry) TargetTags(ctx context.Context, ids []string, names []string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	if len(ids) == 0 || len(names) == 0 {
		return out, nil
	}
	rows, err := r.pool.Query(ctx, `SELECT d.id, k, d.tags ->> k FROM devices d, unnest($2::text[]) k
		WHERE d.id = ANY($1) AND d.tags ? k`, ids, names)
	if err != nil {
		return nil, fmt.Errorf("read tags %v of %d devices: %w", names, len(ids), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, k, v string
		if err := rows.Scan(&id, &k, &v); err != nil {
			return nil, fmt.Errorf("read tags %v: %w", names, err)
		}
		if out[id] == nil {
			out[id] = map[string]string{}
		}
		out[id][k] = v
	}
	return out, rows.Err()
}

// WindowCount is how many devices share one maintenance window (as their tags spell it; empty: none).
type WindowCount struct {
	Window   string `json:"window"`
	Timezone string `json:"timezone"`
	Devices  int64  `json:"devices"`
}

// WindowCounts groups the devices a target query selects by the values of their window and time zone
// tags: what `rollout plan` shows of the windows.
func (r *Registry) WindowCounts(ctx context.Context, q, windowTag, timezoneTag string) ([]WindowCount, error) {
	c, err := r.compileTarget(ctx, q)
	if err != nil {
		return nil, err
	}
	args := append(append([]any(nil), c.Args...), windowTag)
	pw := param(args)
	args = append(args, timezoneTag)
	pz := param(args)
	rows, err := r.pool.Query(ctx, `SELECT coalesce(d.tags ->> `+pw+`, ''), coalesce(d.tags ->> `+pz+`, ''), count(*)
		FROM (`+c.SQL+`) t JOIN devices d ON d.id = t.id GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2`, args...)
	if err != nil {
		return nil, fmt.Errorf("count maintenance windows: %w", err)
	}
	defer rows.Close()
	var out []WindowCount
	for rows.Next() {
		var w WindowCount
		if err := rows.Scan(&w.Window, &w.Timezone, &w.Devices); err != nil {
			return nil, fmt.Errorf("count maintenance windows: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// WaveWindowCount is how many devices of one wave of a planned rollout share one maintenance window (as
// their tags spell it; empty: none).
type WaveWindowCount struct {
	Wave int `json:"wave"` // index from 0
	WindowCount
}

// WaveWindowCounts groups the devices a rollout of version over q would claim by wave and by the values of
// their window and time zone tags: what `rollout plan --window-from-tags` shows per wave. The devices are
// ranked as CreateRollout ranks them for rolloutID (the id the next rollout of version would get), and wave
// i holds the ranks in [cutoffs[i-1], cutoffs[i]).
func (r *Registry) WaveWindowCounts(ctx context.Context, q, version, rolloutID string, cutoffs []int64, windowTag, timezoneTag string) ([]WaveWindowCount, error) {
	c, err := r.compileTarget(ctx, q)
	if err != nil {
		return nil, err
	}
	args := append([]any(nil), c.Args...)
	next := func(v any) string {
		args = append(args, v)
		return param(args)
	}
	id, v, cut, pw, pz := next(rolloutID)+"::text", next(version)+"::text", next(cutoffs)+"::bigint[]", next(windowTag), next(timezoneTag)
	rows, err := r.pool.Query(ctx, `SELECT (SELECT count(*) FROM unnest(`+cut+`) c WHERE c <= r.rank), r.w, r.z, count(*)
		FROM (SELECT row_number() OVER (ORDER BY md5(d.id || `+id+`), d.id) - 1 AS rank,
			coalesce(d.tags ->> `+pw+`, '') AS w, coalesce(d.tags ->> `+pz+`, '') AS z
			FROM devices d WHERE d.id IN (`+c.SQL+`) AND d.status = 'active' AND `+reportedVersionSQL("d")+` <> `+v+`) r
		GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC, 2, 3`, args...)
	if err != nil {
		return nil, fmt.Errorf("count maintenance windows per wave: %w", err)
	}
	defer rows.Close()
	var out []WaveWindowCount
	for rows.Next() {
		var w WaveWindowCount
		var wave int64
		if err := rows.Scan(&wave, &w.Window, &w.Timezone, &w.Devices); err != nil {
			return nil, fmt.Errorf("count maintenance windows per wave: %w", err)
		}
		w.Wave = int(wave)
		out = append(out, w)
	}
	return out, rows.Err()
}
