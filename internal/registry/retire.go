package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// RetireDevices takes devices out of the fleet in one transaction, for a batch of a decommission:
//   - status retired and both credential digests cleared, so the next CONNECT is refused; the row trigger
//     announces every device on NOTIFY, and each gateway drops the live session at once;
//   - the twin (tags, desired, reported with versions) and the device's events archived in devices_archive;
//   - removed from pending jobs (cancelled) and from running rollouts (claim released, cancelled);
//   - a "retired" event on its timeline.
//
// The device row stays (status retired), so `status = 'retired'` queries and timelines still find it until
// purge. Retiring a retired device is harmless (already_retired) and an unknown id is reported, not an error.
func (r *Registry) RetireDevices(ctx context.Context, op string, ids []string, reason string) ([]fleet.RetireResult, error) {
	results := make([]fleet.RetireResult, len(ids))
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		results[i] = fleet.RetireResult{DeviceID: id, Outcome: fleet.RetireUnknown}
		index[id] = i
	}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		return retireTx(ctx, tx, op, ids, reason, results, index)
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// retireTx is RetireDevices in the caller's transaction: results (one per id, preset to unknown) and index
// (id -> position) are filled in.
func retireTx(ctx context.Context, tx pgx.Tx, op string, ids []string, reason string, results []fleet.RetireResult, index map[string]int) error {
	rows, err := tx.Query(ctx, "SELECT id, status FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)
	if err != nil {
		return fmt.Errorf("lock devices: %w", err)
	}
	var retire []string
	for rows.Next() {
		var id, status string
		if err := rows.Scan(&id, &status); err != nil {
			rows.Close()
			return fmt.Errorf("lock devices: %w", err)
		}
		if status == statusRetired {
			results[index[id]].Outcome = fleet.RetireAlreadyRetired
			continue
		}
		results[index[id]].Outcome = fleet.RetireDone
		retire = append(retire, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("lock devices: %w", err)
	}
	if len(retire) == 0 {
		return nil
	}
	return retireLocked(ctx, tx, op, retire, reason)
}

// RetireJobTargets retires a decommission batch and records its outcomes in one transaction
// (fleet.RetireStore). The devices are locked before the job's rows, as PatchJobTargets does.
func (r *Registry) RetireJobTargets(ctx context.Context, job string, targets []fleet.JobTarget, reason string,
	outcomes fleet.JobOutcomesFunc[fleet.RetireResult]) error {
	var todo []fleet.JobTarget
	for _, t := range targets {
		if t.State == fleet.JobPending || t.State == fleet.JobDispatched {
			todo = append(todo, t)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	ids := make([]string, len(todo))
	results := make([]fleet.RetireResult, len(todo))
	index := make(map[string]int, len(todo))
	for i, t := range todo {
		ids[i] = t.DeviceID
		results[i] = fleet.RetireResult{DeviceID: t.DeviceID, Outcome: fleet.RetireUnknown}
		index[t.DeviceID] = i
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if err := retireTx(ctx, tx, job, ids, reason, results, index); err != nil {
			return fmt.Errorf("job %s: retire %d devices: %w", job, len(ids), err)
		}
		outs, err := outcomes(todo, results)
		if err != nil {
			return err
		}
		return recordAll(ctx, tx, job, outs)
	})
}

// retireLocked retires devices whose rows the transaction has locked.
func retireLocked(ctx context.Context, tx pgx.Tx, op string, ids []string, reason string) error {
	steps := []struct {
		what string
		sql  string
		args []any
	}{
		{"archive", `INSERT INTO devices_archive (id, retired_at, reason, operation, twin, history)
			SELECT d.id, now(), $2, $3,
				jsonb_build_object('deviceId', d.id, 'status', d.status, 'tags', d.tags, 'tagsVersion', d.tags_version,
					'desired', d.desired, 'desiredVersion', d.desired_version, 'reported', d.reported,
					'reportedVersion', d.reported_version, 'createdAt', d.created_at, 'provisionedBy', d.provisioned_by,
					'lastSeen', d.last_seen, 'replaces', d.replaces, 'replacedBy', d.replaced_by),
				coalesce((SELECT jsonb_agg(jsonb_build_object('at', e.at, 'kind', e.kind, 'detail', e.detail) ORDER BY e.at, e.id)
					FROM device_events e WHERE e.device_id = d.id), '[]'::jsonb)
			FROM devices d WHERE d.id = ANY($1)
			ON CONFLICT (id) DO UPDATE SET retired_at = EXCLUDED.retired_at, archived_at = now(), reason = EXCLUDED.reason,
				operation = EXCLUDED.operation, twin = EXCLUDED.twin, history = EXCLUDED.history`, []any{ids, reason, op}},
		// online = false: the gateways drop the session as soon as this commits; the disconnect they record
		// later changes nothing, and no reader sees a retired device as connected meanwhile.
		{"revoke", `UPDATE devices SET status = 'retired', retired_at = now(), secret1_hash = NULL, secret2_hash = NULL,
			cert_fingerprint = NULL, cert2_fingerprint = NULL, online = false, updated_at = now() WHERE id = ANY($1)`, []any{ids}},
		// Not the retiring job's own rows (op is its id): their outcome is recorded in the same transaction.
		{"cancel pending jobs", `UPDATE job_devices SET state = 'cancelled', error = 'device retired', updated_at = now()
			WHERE device_id = ANY($1) AND job_id <> $2 AND state IN ('pending', 'running')`, []any{ids, op}},
		{"leave rollouts", `UPDATE rollout_devices SET active = false, phase = CASE WHEN phase IN ('queued', 'dispatched',
			'downloading', 'installing', 'rebooting', 'baking', 'rolling_back') THEN 'cancelled' ELSE phase END,
			reason = CASE WHEN phase IN ('succeeded', 'failed', 'skipped', 'rolled_back', 'rollback_failed') THEN reason ELSE 'device retired' END,
			updated_at = now() WHERE device_id = ANY($1) AND active`, []any{ids}},
		{"record events", `INSERT INTO device_events (device_id, kind, detail)
			SELECT id, 'retired', jsonb_build_object('reason', $2::text, 'operation', $3::text) FROM unnest($1::text[]) AS id`,
			[]any{ids, reason, op}},
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("retire %d devices: %s: %w", len(ids), s.what, err)
		}
	}
	return nil
}

// SetEnabled disables (quarantines) or re-enables a device. Disabling takes effect at once like a retirement
// (the gateway refuses the next CONNECT and drops the live session) but keeps the credentials, so enabling
// lets the same device back in. A retired device cannot be enabled or disabled.
func (r *Registry) SetEnabled(ctx context.Context, id string, enabled bool, reason string) (changed bool, err error) {
	to, kind := statusDisabled, "disabled"
	if enabled {
		to, kind = statusActive, "enabled"
	}
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var status string
		err := tx.QueryRow(ctx, "SELECT status FROM devices WHERE id = $1 FOR UPDATE", id).Scan(&status)
		if isNoRows(err) {
			return notFound(id)
		}
		if err != nil {
			return fmt.Errorf("load device %s: %w", id, err)
		}
		switch status {
		case statusRetired:
			return fmt.Errorf("device %s: %w; a retired device cannot be %s (replace it with `fleetflow replace`)", id, fleet.ErrRetired, kind)
		case to:
			return nil
		}
		changed = true
		if _, err := tx.Exec(ctx, "UPDATE devices SET status = $2, updated_at = now() WHERE id = $1", id, to); err != nil {
			return fmt.Errorf("%s %s: %w", kind, id, err)
		}
		_, err = tx.Exec(ctx, "INSERT INTO device_events (device_id, kind, detail) VALUES ($1, $2, jsonb_build_object('reason', $3::text))",
			id, kind, reason)
		return err
	})
	return changed, err
}

// ReplaceDevice makes device nw take over old's role: nw gets old's tags and desired properties (its own
// tags win where both have a key), both record the lineage (old.replaced_by, nw.replaces, and events on both
// timelines), and old is retired. Repeating it after it succeeded is harmless. nw must exist and must not be
// retired; old must exist.
func (r *Registry) ReplaceDevice(ctx context.Context, op, old, nw string) (fleet.ReplaceResult, error) {
	res := fleet.ReplaceResult{Old: old, New: nw}
	if old == nw {
		return res, fmt.Errorf("replace %s: a device cannot replace itself", old)
	}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		type dev struct {
			status, replacedBy string
		}
		devs := map[string]*dev{}
		rows, err := tx.Query(ctx, "SELECT id, status, coalesce(replaced_by, '') FROM devices WHERE id IN ($1, $2) ORDER BY id FOR UPDATE", old, nw)
		if err != nil {
			return fmt.Errorf("lock devices: %w", err)
		}
		for rows.Next() {
			var id string
			d := &dev{}
			if err := rows.Scan(&id, &d.status, &d.replacedBy); err != nil {
				rows.Close()
				return err
			}
			devs[id] = d
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock devices: %w", err)
		}
		o, n := devs[old], devs[nw]
		switch {
		case o == nil:
			return notFound(old)
		case n == nil:
			return notFound(nw)
		case n.status == statusRetired:
			return fmt.Errorf("replacement %s: %w; give a new device id", nw, fleet.ErrRetired)
		case o.status == statusRetired && o.replacedBy == nw:
			// Done before (a retried activity): report the state as it is.
			return tx.QueryRow(ctx, "SELECT desired_version, online, desired FROM devices WHERE id = $1", nw).
				Scan(&res.DesiredVersion, &res.Online, &res.Desired)
		case o.status == statusRetired:
			return fmt.Errorf("device %s: %w (retired at its own decommission); nothing to replace", old, fleet.ErrRetired)
		}
		err = tx.QueryRow(ctx, `UPDATE devices n SET tags = o.tags || n.tags, tags_version = n.tags_version + 1,
				desired = o.desired, desired_version = n.desired_version + 1, twin_version = n.twin_version + 1,
				replaces = o.id, updated_at = now()
			FROM devices o WHERE o.id = $1 AND n.id = $2 RETURNING n.desired_version, n.online, n.desired`, old, nw).
			Scan(&res.DesiredVersion, &res.Online, &res.Desired)
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", old, nw, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE devices SET replaced_by = $2 WHERE id = $1", old, nw); err != nil {
			return fmt.Errorf("record lineage: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO device_events (device_id, kind, detail) VALUES
			($1, 'replaced_by', jsonb_build_object('device', $2::text, 'operation', $3::text)),
			($2, 'replaces', jsonb_build_object('device', $1::text, 'operation', $3::text))`, old, nw, op); err != nil {
			return fmt.Errorf("record lineage: %w", err)
		}
		return retireLocked(ctx, tx, op, []string{old}, "replaced by "+nw)
	})
	return res, err
}

// PurgeArchive deletes retired devices whose retirement is older than olderThan: their rows, archive entries,
// events, and job, rollout and alert rows. It returns how many devices it removed.
func (r *Registry) PurgeArchive(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, errors.New("purge: the retention must be positive")
	}
	cutoff := "-" + strconv.FormatInt(int64(olderThan/time.Second), 10) + " seconds"
	var n int64
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM devices_archive WHERE retired_at < now() + $1::interval RETURNING id`, cutoff)
		if err != nil {
			return fmt.Errorf("purge archive: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("purge archive: %w", err)
		}
		n = int64(len(ids))
		if n == 0 {
			return nil
		}
		for _, q := range []string{
			"DELETE FROM devices WHERE id = ANY($1) AND status = 'retired'",
			"DELETE FROM device_events WHERE device_id = ANY($1)",
			"DELETE FROM job_devices WHERE device_id = ANY($1)",
			"DELETE FROM rollout_devices WHERE device_id = ANY($1) AND NOT active",
			"DELETE FROM alerts WHERE device_id = ANY($1)",
			"DELETE FROM device_job_status WHERE device_id = ANY($1)",
		} {
			if _, err := tx.Exec(ctx, q, ids); err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					return fmt.Errorf("purge: %s: %w", q, err)
				}
				return fmt.Errorf("purge: %w", err)
			}
		}
		return nil
	})
	return n, err
}

// CreateJobForIDs records a job over an explicit list of device ids: CreateJob with spec.IDs set to ids.
func (r *Registry) CreateJobForIDs(ctx context.Context, spec fleet.NewJob, ids []string) (int64, error) {
	if ids == nil {
		ids = []string{}
	}
	spec.IDs = ids
	return r.CreateJob(ctx, spec)
}
