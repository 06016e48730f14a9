package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	rolloutpkg "github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// rolloutLock serializes rollout claims, so that two rollouts started at the same moment cannot both see
// a device as free.
const rolloutLock = 0x666c7472 // "fltr"

// Rollout phases as stored in rollout_devices.phase; internal/rollout owns their meaning and rules.
const (
	phaseQueued      = "queued"
	phaseSkipped     = "skipped"
	phaseDispatched  = "dispatched"
	phaseFailed      = "failed"
	phaseRollingBack = "rolling_back"
	phaseRolledBack  = "rolled_back"
	phaseCancelled   = "cancelled"
)

// touchedPhases are the phases of devices that were sent the new firmware and must be rolled back.
var touchedPhases = []string{"dispatched", "downloading", "installing", "rebooting", "baking", "succeeded", "failed"}

// RolloutPlan is what a rollout would cover if started now.
type RolloutPlan struct {
	Selected  int64                       `json:"selected"`  // devices the query selects
	OnVersion int64                       `json:"onVersion"` // of which already run the version
	Inactive  int64                       `json:"inactive"`  // of which are disabled or retired
	Eligible  int64                       `json:"eligible"`  // the rest: what the rollout would claim
	Conflict  *fleet.RolloutConflictError `json:"-"`
}

// Rollout is a rollouts row.
type Rollout struct {
	ID         string          `json:"rolloutId"`
	Version    string          `json:"version"`
	Query      string          `json:"query"`
	Spec       json.RawMessage `json:"spec"`
	State      string          `json:"state"`
	Total      int64           `json:"total"`
	Result     json.RawMessage `json:"result,omitempty"`
	CreatedAt  time.Time       `json:"createdAt"`
	FinishedAt *time.Time      `json:"finishedAt,omitempty"`
}

// reportedVersionSQL is the firmware version a device reports (” when none), as SQL over alias.
func reportedVersionSQL(alias string) string {
	return "coalesce(" + alias + ".reported -> 'firmware' ->> 'version', '')"
}

// PlanRollout counts what a rollout of version over the query would claim, and whether another rollout
// holds any of those devices. It writes nothing.
func (r *Registry) PlanRollout(ctx context.Context, version, q string) (RolloutPlan, error) {
	var p RolloutPlan
	c, err := r.targetsSQL(ctx, r.pool, q)
	if err != nil {
		return p, err
	}
	args := append(append([]any(nil), c.Args...), version)
	v := "$" + strconv.Itoa(len(args))
	err = r.pool.QueryRow(ctx, `SELECT count(*),
		count(*) FILTER (WHERE `+reportedVersionSQL("d")+` = `+v+`::text),
		count(*) FILTER (WHERE d.status <> 'active'),
		count(*) FILTER (WHERE d.status = 'active' AND `+reportedVersionSQL("d")+` <> `+v+`::text)
		FROM devices d WHERE d.id IN (`+c.SQL+`)`, args...).Scan(&p.Selected, &p.OnVersion, &p.Inactive, &p.Eligible)
	if err != nil {
		return p, fmt.Errorf("plan rollout: %w", err)
	}
	p.Conflict, err = findConflict(ctx, r.pool, c.SQL, c.Args)
	return p, err
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func findConflict(ctx context.Context, q querier, targets string, args []any) (*fleet.RolloutConflictError, error) {
	var e fleet.RolloutConflictError
	err := q.QueryRow(ctx, `SELECT rollout_id, count(*) FROM rollout_devices WHERE active AND device_id IN (`+targets+`)
		GROUP BY rollout_id ORDER BY count(*) DESC, rollout_id LIMIT 1`, args...).Scan(&e.Rollout, &e.Devices)
	if isNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("check rollout conflicts: %w", err)
	}
	return &e, nil
}

// CreateRollout records a rollout and claims its devices (fleet.RolloutStore): the active devices the query
// selects that do not run the version yet, each given a stable pseudo-random rank that decides its wave. It
// is idempotent — the workflow's first step calls it: a rollout whose row exists already is left untouched
// (its own claims are no conflict) and its total returned. It fails with fleet.ErrUnknownFirmware,
// fleet.ErrEmptyTarget or a *fleet.RolloutConflictError, leaving nothing behind.
func (r *Registry) CreateRollout(ctx context.Context, spec fleet.NewRollout) (int64, error) {
	c, err := r.targetsSQL(ctx, r.pool, spec.Query)
	if err != nil {
		return 0, err
	}
	var total int64
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", rolloutLock); err != nil {
			return fmt.Errorf("lock rollouts: %w", err)
		}
		err := tx.QueryRow(ctx, "SELECT total FROM rollouts WHERE id = $1", spec.ID).Scan(&total)
		if err == nil {
			return nil // created by an earlier attempt
		}
		if !isNoRows(err) {
			return fmt.Errorf("load rollout %s: %w", spec.ID, err)
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM firmware WHERE version = $1)", spec.Version).Scan(&exists); err != nil {
			return fmt.Errorf("load firmware %s: %w", spec.Version, err)
		}
		if !exists {
			return fmt.Errorf("firmware %s: %w (add it with `fleetflow firmware add`)", spec.Version, fleet.ErrUnknownFirmware)
		}
		conflict, err := findConflict(ctx, tx, c.SQL, c.Args)
		if err != nil {
			return err
		}
		if conflict != nil {
			return conflict
		}
		if _, err := tx.Exec(ctx, "INSERT INTO rollouts (id, version, query, spec) VALUES ($1, $2, $3, $4)",
			spec.ID, spec.Version, spec.Query, string(spec.Spec)); err != nil {
			return fmt.Errorf("create rollout %s: %w", spec.ID, err)
		}
		if err := recordGroupUses(ctx, tx, "rollout", spec.ID, c.Groups); err != nil {
			return err
		}
		args := append(append([]any(nil), c.Args...), spec.ID, spec.Version)
		id, v := "$"+strconv.Itoa(len(args)-1)+"::text", "$"+strconv.Itoa(len(args))+"::text"
		tag, err := tx.Exec(ctx, `INSERT INTO rollout_devices (rollout_id, rank, device_id)
			SELECT `+id+`, row_number() OVER (ORDER BY md5(d.id || `+id+`), d.id) - 1, d.id FROM devices d
			WHERE d.id IN (`+c.SQL+`) AND d.status = 'active' AND `+reportedVersionSQL("d")+` <> `+v, args...)
		if err != nil {
			return fmt.Errorf("claim devices for rollout %s: %w", spec.ID, err)
		}
		total = tag.RowsAffected()
		if total == 0 {
			return fmt.Errorf("rollout of %s: %w that need it (all selected devices already run it, or are disabled)", spec.Version, fleet.ErrEmptyTarget)
		}
		_, err = tx.Exec(ctx, "UPDATE rollouts SET total = $2 WHERE id = $1", spec.ID, total)
		return err
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// GetRollout returns a rollout.
func (r *Registry) GetRollout(ctx context.Context, id string) (Rollout, error) {
	var ro Rollout
	var spec, result []byte
	err := r.pool.QueryRow(ctx, "SELECT id, version, query, spec, state, total, result, created_at, finished_at FROM rollouts WHERE id = $1", id).
		Scan(&ro.ID, &ro.Version, &ro.Query, &spec, &ro.State, &ro.Total, &result, &ro.CreatedAt, &ro.FinishedAt)
	if isNoRows(err) {
		return ro, fmt.Errorf("rollout %s: %w", id, fleet.ErrNotFound)
	}
	if err != nil {
		return ro, fmt.Errorf("load rollout %s: %w", id, err)
	}
	ro.Spec, ro.Result = spec, result
	return ro, nil
}

// firmwarePatch is the desired patch that asks a device to install fw under job.
func firmwarePatch(job string, fw fleet.Firmware) []byte {
	return protocol.FirmwareRequest{JobID: job, Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256}.DesiredPatch()
}

// DispatchWave moves up to limit queued devices ranked below cutoff into wave: devices that meanwhile run
// fw's version or are no longer active are skipped; the others get desired.firmware (job = the rollout id),
// in the same transaction as their phase. It returns the pushes and whether queued
// devices below cutoff remain. Calling it again after a crash continues where it stopped.
func (r *Registry) DispatchWave(ctx context.Context, rollout string, wave int, cutoff int64, fw fleet.Firmware, limit int) (pushes []fleet.DesiredPush, skipped int64, more bool, err error) {
	c, err := r.dispatchWave(ctx, rollout, wave, -1, cutoff, fw, limit, nil, nil)
	return c.Pushes, c.Skipped, c.More, err
}

// DispatchWaveWindowed is DispatchWave under maintenance windows (fleet.RolloutStore): the chunk is the
// queued devices ranked in (after, cutoff), and decide says, from the text of each one's tags named by
// tagNames, whether it is dispatched, recorded in another phase, or left queued (docs/architecture.md,
// "Maintenance windows").
func (r *Registry) DispatchWaveWindowed(ctx context.Context, rollout string, wave int, after, cutoff int64, fw fleet.Firmware, limit int,
	tagNames []string, decide fleet.WaveDecider) (fleet.WaveChunk, error) {
	if tagNames == nil {
		tagNames = []string{}
	}
	return r.dispatchWave(ctx, rollout, wave, after, cutoff, fw, limit, tagNames, decide)
}

func (r *Registry) dispatchWave(ctx context.Context, rollout string, wave int, after, cutoff int64, fw fleet.Firmware, limit int,
	tagNames []string, decide fleet.WaveDecider) (fleet.WaveChunk, error) {
	var out fleet.WaveChunk
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		// The window tags' text, as TargetTags reads them; '{}' when none is asked for or set.
		rows, err := tx.Query(ctx, `SELECT rd.rank, rd.device_id, d.status, `+reportedVersionSQL("d")+`,
			coalesce((SELECT jsonb_object_agg(k, d.tags ->> k) FROM unnest($5::text[]) k WHERE d.tags ? k), '{}')
			FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
			WHERE rd.rollout_id = $1 AND rd.phase = 'queued' AND rd.rank > $4 AND rd.rank < $2 ORDER BY rd.rank LIMIT $3 FOR UPDATE OF rd`,
			rollout, cutoff, limit+1, after, tagNames)
		if err != nil {
			return fmt.Errorf("select wave %d of %s: %w", wave, rollout, err)
		}
		type cand struct {
			rank              int64
			id, status, prevV string
			tags              map[string]string
		}
		var cands []cand
		for rows.Next() {
			var c cand
			if err := rows.Scan(&c.rank, &c.id, &c.status, &c.prevV, &c.tags); err != nil {
				rows.Close()
				return fmt.Errorf("select wave %d of %s: %w", wave, rollout, err)
			}
			cands = append(cands, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("select wave %d of %s: %w", wave, rollout, err)
		}
		out.More = len(cands) > limit
		if out.More {
			cands = cands[:limit]
		}
		if len(cands) > 0 {
			out.Last = cands[len(cands)-1].rank
		}
		patch := firmwarePatch(rollout, fw)
		var patches []fleet.DevicePatch
		upd := phaseRows{}
		for _, c := range cands {
			switch {
			case c.prevV == fw.Version:
				upd.add(c.rank, phaseSkipped, "already runs "+fw.Version, c.prevV)
				out.Skipped++
			case c.status != statusActive:
				upd.add(c.rank, phaseSkipped, "device is "+c.status, c.prevV)
				out.Skipped++
			case decide != nil:
				dispatch, phase, reason := decide(c.id, c.tags)
				switch {
				case dispatch:
					patches = append(patches, fleet.DevicePatch{DeviceID: c.id, Patch: patch})
				case phase != "":
					upd.add(c.rank, string(phase), reason, c.prevV)
				}
			default:
				patches = append(patches, fleet.DevicePatch{DeviceID: c.id, Patch: patch})
			}
		}
		results, err := patchTwinsTx(ctx, tx, twin.Desired, patches)
		if err != nil {
			return fmt.Errorf("write desired firmware for wave %d of %s: %w", wave, rollout, err)
		}
		byID := make(map[string]cand, len(cands))
		for _, c := range cands {
			byID[c.id] = c
		}
		for _, res := range results {
			c := byID[res.DeviceID]
			if res.Err != nil {
				upd.add(c.rank, phaseFailed, "desired firmware could not be written: "+res.Err.Error(), c.prevV)
				continue
			}
			upd.add(c.rank, phaseDispatched, "", c.prevV)
			out.Pushes = append(out.Pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patch})
		}
		if len(upd.ranks) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE rollout_devices rd SET wave = $2, phase = v.phase, reason = v.reason,
			prev_version = v.prev, dispatched_at = now(), updated_at = now()
			FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) AS v(rank, phase, reason, prev)
			WHERE rd.rollout_id = $1 AND rd.rank = v.rank`, rollout, wave, upd.ranks, upd.phases, upd.reasons, upd.prev)
		if err != nil {
			return fmt.Errorf("record wave %d of %s: %w", wave, rollout, err)
		}
		return nil
	})
	if err != nil {
		return fleet.WaveChunk{}, err
	}
	return out, nil
}

// phaseRows collects column arrays for an UPDATE … FROM unnest.
type phaseRows struct {
	ranks                 []int64
	phases, reasons, prev []string
}

func (p *phaseRows) add(rank int64, phase, reason, prev string) {
	p.ranks = append(p.ranks, rank)
	p.phases = append(p.phases, phase)
	p.reasons = append(p.reasons, reason)
	p.prev = append(p.prev, prev)
}

// DesiredDocs returns the current desired document and version of each device (for re-sending the desired
// state to devices that seem to have missed a push). Unknown devices are left out.
func (r *Registry) DesiredDocs(ctx context.Context, ids []string) ([]fleet.DesiredPush, error) {
	rows, err := r.pool.Query(ctx, "SELECT id, desired_version, online, desired FROM devices WHERE id = ANY($1) ORDER BY id", ids)
	if err != nil {
		return nil, fmt.Errorf("load desired state: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.DesiredPush, error) {
		var p fleet.DesiredPush
		err := row.Scan(&p.DeviceID, &p.Version, &p.Online, &p.Patch)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("load desired state: %w", err)
	}
	return out, nil
}

// ObserveRollout returns the devices of a rollout in the given phases with their latest job status (for
// job) and what they report.
func (r *Registry) ObserveRollout(ctx context.Context, rollout, job string, phases []rolloutpkg.Phase) ([]fleet.RolloutObservation, error) {
	phaseNames := make([]string, len(phases))
	for i, p := range phases {
		phaseNames[i] = string(p)
	}
	rows, err := r.pool.Query(ctx, `SELECT rd.rank, rd.device_id, coalesce(rd.wave, -1), rd.phase, rd.prev_version,
		coalesce(rd.dispatched_at, 'epoch'), coalesce(rd.bake_since, 'epoch'), coalesce(rd.rollback_at, 'epoch'),
		coalesce(js.status, ''), coalesce(js.reason, ''), `+reportedVersionSQL("d")+`,
		coalesce(d.reported -> 'health' ->> 'status', ''), coalesce(d.reported -> 'health' ->> 'reason', ''),
		d.online, coalesce(d.last_seen, 'epoch')
		FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
		LEFT JOIN device_job_status js ON js.job_id = $2 AND js.device_id = rd.device_id
		WHERE rd.rollout_id = $1 AND rd.phase = ANY($3) ORDER BY rd.rank`, rollout, job, phaseNames)
	if err != nil {
		return nil, fmt.Errorf("observe rollout %s: %w", rollout, err)
	}
	epoch := time.Unix(0, 0).UTC()
	zero := func(t time.Time) time.Time {
		if t.Equal(epoch) {
			return time.Time{}
		}
		return t
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.RolloutObservation, error) {
		var o fleet.RolloutObservation
		err := row.Scan(&o.Rank, &o.DeviceID, &o.Wave, &o.Phase, &o.PrevVersion, &o.DispatchedAt, &o.BakeSince, &o.RollbackAt,
			&o.JobStatus, &o.JobReason, &o.ReportedVersion, &o.Health, &o.HealthReason, &o.Online, &o.LastSeen)
		o.DispatchedAt, o.BakeSince, o.RollbackAt, o.LastSeen = zero(o.DispatchedAt), zero(o.BakeSince), zero(o.RollbackAt), zero(o.LastSeen)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("observe rollout %s: %w", rollout, err)
	}
	return out, nil
}

// UpdateRolloutPhases writes phase changes in one statement.
func (r *Registry) UpdateRolloutPhases(ctx context.Context, rollout string, ups []fleet.PhaseUpdate) error {
	if len(ups) == 0 {
		return nil
	}
	ranks := make([]int64, len(ups))
	phases := make([]string, len(ups))
	reasons := make([]string, len(ups))
	bakes := make([]*time.Time, len(ups))
	for i, u := range ups {
		ranks[i], phases[i], reasons[i] = u.Rank, string(u.Phase), u.Reason
		if !u.BakeSince.IsZero() {
			b := u.BakeSince
			bakes[i] = &b
		}
	}
	// A rollback decision without a reason keeps the forward one (why the device failed): it is the story
	// of the rollback.
	_, err := r.pool.Exec(ctx, `UPDATE rollout_devices rd SET phase = v.phase,
		reason = coalesce(nullif(v.reason, ''), CASE WHEN v.phase LIKE 'roll%' THEN rd.reason ELSE '' END),
		bake_since = coalesce(v.bake, rd.bake_since), updated_at = now()
		FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) AS v(rank, phase, reason, bake)
		WHERE rd.rollout_id = $1 AND rd.rank = v.rank`, rollout, ranks, phases, reasons, bakes)
	if err != nil {
		return fmt.Errorf("update phases of rollout %s: %w", rollout, err)
	}
	return nil
}

// RolloutCounts counts a rollout's devices per wave and phase.
func (r *Registry) RolloutCounts(ctx context.Context, rollout string) ([]fleet.PhaseCount, error) {
	rows, err := r.pool.Query(ctx, `SELECT coalesce(wave, -1), phase, count(*) FROM rollout_devices
		WHERE rollout_id = $1 GROUP BY 1, 2 ORDER BY 1, 2`, rollout)
	if err != nil {
		return nil, fmt.Errorf("count rollout %s: %w", rollout, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.PhaseCount, error) {
		var c fleet.PhaseCount
		err := row.Scan(&c.Wave, &c.Phase, &c.N)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("count rollout %s: %w", rollout, err)
	}
	return out, nil
}

// StartRollback sends up to limit touched devices of a rollout back to the version they ran before (under
// job, a new job id so that devices treat it as a new update), and returns the pushes and
// whether touched devices remain. A device whose previous version is unknown is left as it is.
func (r *Registry) StartRollback(ctx context.Context, rollout, job string, limit int) (pushes []fleet.DesiredPush, more bool, err error) {
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT rd.rank, rd.device_id, rd.prev_version, coalesce(f.url, ''), coalesce(f.sha256, '')
			FROM rollout_devices rd LEFT JOIN firmware f ON f.version = rd.prev_version
			WHERE rd.rollout_id = $1 AND rd.phase = ANY($2) ORDER BY rd.rank LIMIT $3 FOR UPDATE OF rd`,
			rollout, touchedPhases, limit+1)
		if err != nil {
			return fmt.Errorf("select devices to roll back in %s: %w", rollout, err)
		}
		type cand struct {
			rank int64
			id   string
			fw   fleet.Firmware
		}
		var cands []cand
		for rows.Next() {
			var c cand
			if err := rows.Scan(&c.rank, &c.id, &c.fw.Version, &c.fw.URL, &c.fw.SHA256); err != nil {
				rows.Close()
				return fmt.Errorf("select devices to roll back in %s: %w", rollout, err)
			}
			cands = append(cands, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("select devices to roll back in %s: %w", rollout, err)
		}
		more = len(cands) > limit
		if more {
			cands = cands[:limit]
		}
		var patches []fleet.DevicePatch
		upd := phaseRows{}
		byID := map[string]cand{}
		for _, c := range cands {
			if c.fw.Version == "" {
				upd.add(c.rank, phaseRolledBack, "no previous version known; left as is", "")
				continue
			}
			byID[c.id] = c
			patches = append(patches, fleet.DevicePatch{DeviceID: c.id, Patch: firmwarePatch(job, c.fw)})
		}
		results, err := patchTwinsTx(ctx, tx, twin.Desired, patches)
		if err != nil {
			return fmt.Errorf("write rollback firmware in %s: %w", rollout, err)
		}
		for i, res := range results {
			c := byID[res.DeviceID]
			if res.Err != nil {
				upd.add(c.rank, "rollback_failed", "desired firmware could not be written: "+res.Err.Error(), c.fw.Version)
				continue
			}
			upd.add(c.rank, phaseRollingBack, "", c.fw.Version)
			pushes = append(pushes, fleet.DesiredPush{DeviceID: res.DeviceID, Version: res.Version, Online: res.Online, Patch: patches[i].Patch})
		}
		if len(upd.ranks) == 0 {
			return nil
		}
		// The forward reason (why a device failed) is kept: it is the story of the rollback.
		_, err = tx.Exec(ctx, `UPDATE rollout_devices rd SET phase = v.phase,
			reason = CASE WHEN v.reason = '' THEN rd.reason ELSE v.reason END, rollback_at = now(), updated_at = now()
			FROM unnest($2::bigint[], $3::text[], $4::text[]) AS v(rank, phase, reason)
			WHERE rd.rollout_id = $1 AND rd.rank = v.rank`, rollout, upd.ranks, upd.phases, upd.reasons)
		if err != nil {
			return fmt.Errorf("record rollback in %s: %w", rollout, err)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return pushes, more, nil
}

// FinishRollout ends a rollout: devices never dispatched become cancelled, every claim is released (so other
// rollouts may target the devices), and the final state and result are recorded. Idempotent.
func (r *Registry) FinishRollout(ctx context.Context, id string, state fleet.RolloutEnd, result json.RawMessage) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		// A maintenance window that did not open in time is the reason the workflow gives (cancelReason).
		reason := "the rollout ended before this device was dispatched"
		var summary struct {
			CancelReason string `json:"cancelReason"`
		}
		if len(result) > 0 && json.Unmarshal(result, &summary) == nil && summary.CancelReason != "" {
			reason = summary.CancelReason
		}
		if _, err := tx.Exec(ctx, `UPDATE rollout_devices SET phase = 'cancelled', reason = $2, updated_at = now()
			WHERE rollout_id = $1 AND phase = 'queued'`, id, reason); err != nil {
			return fmt.Errorf("finish rollout %s: %w", id, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE rollout_devices SET active = false WHERE rollout_id = $1 AND active", id); err != nil {
			return fmt.Errorf("finish rollout %s: %w", id, err)
		}
		var res any
		if len(result) > 0 {
			res = string(result)
		}
		_, err := tx.Exec(ctx, "UPDATE rollouts SET state = $2, result = $3::jsonb, finished_at = coalesce(finished_at, now()) WHERE id = $1",
			id, string(state), res)
		return err
	})
}

// RolloutDevices lists a rollout's devices in the given phases (all when none), in rank order, at most limit.
func (r *Registry) RolloutDevices(ctx context.Context, rollout string, phases []rolloutpkg.Phase, limit int) ([]fleet.RolloutDevice, error) {
	// Plain strings, as ObserveRollout passes them: an empty (not nil) array means every phase.
	phaseNames := make([]string, len(phases))
	for i, p := range phases {
		phaseNames[i] = string(p)
	}
	rows, err := r.pool.Query(ctx, `SELECT device_id, coalesce(wave, -1), phase, prev_version, reason, updated_at
		FROM rollout_devices WHERE rollout_id = $1 AND (cardinality($2::text[]) = 0 OR phase = ANY($2))
		ORDER BY rank LIMIT $3`, rollout, phaseNames, limit)
	if err != nil {
		return nil, fmt.Errorf("list devices of rollout %s: %w", rollout, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.RolloutDevice, error) {
		var d fleet.RolloutDevice
		err := row.Scan(&d.DeviceID, &d.Wave, &d.Phase, &d.PrevVersion, &d.Reason, &d.UpdatedAt)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("list devices of rollout %s: %w", rollout, err)
	}
	return out, nil
}

// CountRollouts returns how many rollouts of version exist, so the next one can be numbered.
func (r *Registry) CountRollouts(ctx context.Context, version string) (int64, error) {
	var n int64
	if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM rollouts WHERE version = $1", version).Scan(&n); err != nil {
		return 0, fmt.Errorf("count rollouts of %s: %w", version, err)
	}
	return n, nil
}
