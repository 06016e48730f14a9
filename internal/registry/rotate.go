package registry

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// StageRotation writes the new digests of a rotation batch into the devices' free slots and marks the
// targets dispatched, in one transaction (fleet.RotateStore). The devices are locked first, in id order,
// then the targets' rows: the order every writer of both tables uses.
func (r *Registry) StageRotation(ctx context.Context, job string, writes []fleet.RotationWrite) ([]fleet.RotationStaged, error) {
	if len(writes) == 0 {
		return nil, nil
	}
	out := make([]fleet.RotationStaged, len(writes))
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		ids := make([]string, len(writes))
		seqs := make([]int64, len(writes))
		for i, w := range writes {
			ids[i], seqs[i] = w.Target.DeviceID, w.Target.Seq
		}
		type devRow struct {
			status     string
			s1, s2     []byte
			cert       []byte
			authDigest []byte
		}
		devs := map[string]*devRow{}
		rows, err := tx.Query(ctx, `SELECT id, status, secret1_hash, secret2_hash, cert_fingerprint, auth_digest FROM devices
			WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
		if err != nil {
			return fmt.Errorf("lock devices of job %s: %w", job, err)
		}
		for rows.Next() {
			var id string
			d := &devRow{}
			if err := rows.Scan(&id, &d.status, &d.s1, &d.s2, &d.cert, &d.authDigest); err != nil {
				rows.Close()
				return fmt.Errorf("lock devices of job %s: %w", job, err)
			}
			devs[id] = d
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock devices of job %s: %w", job, err)
		}
		type target struct {
			state string
			slot  int16
		}
		targets := map[int64]target{}
		rows, err = tx.Query(ctx, `SELECT seq, state, coalesce(cred_slot, 0) FROM job_devices WHERE job_id = $1 AND seq = ANY($2)
			ORDER BY seq FOR UPDATE`, job, seqs)
		if err != nil {
			return fmt.Errorf("lock targets of job %s: %w", job, err)
		}
		for rows.Next() {
			var seq int64
			var t target
			if err := rows.Scan(&seq, &t.state, &t.slot); err != nil {
				rows.Close()
				return fmt.Errorf("lock targets of job %s: %w", job, err)
			}
			targets[seq] = t
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock targets of job %s: %w", job, err)
		}

		var outs []fleet.JobOutcome
		var wIDs []string
		var wSlots []int16
		var wDigests [][]byte
		var wSeqs []int64
		var running []int64
		for i, w := range writes {
			t := w.Target
			out[i] = fleet.RotationStaged{Seq: t.Seq, DeviceID: t.DeviceID}
			cur, ok := targets[t.Seq]
			if !ok || (cur.state != string(fleet.JobPending) && cur.state != string(fleet.JobDispatched)) {
				return fmt.Errorf("job %s: target %d %w", job, t.Seq, errTargetsMoved)
			}
			d := devs[t.DeviceID]
			fail := func(reason string) {
				outs = append(outs, fleet.JobOutcome{Seq: t.Seq, State: fleet.JobFailed, Error: reason})
			}
			switch {
			case d == nil:
				fail(fleet.RotateUnknown)
				continue
			case d.status == string(fleet.StatusRetired):
				fail(fleet.RotateRetired)
				continue
			case d.status != string(fleet.StatusActive):
				fail(fleet.RotateDisabled)
				continue
			case d.s1 == nil && d.s2 == nil && d.cert != nil:
				fail(fleet.RotateCertificate)
				continue
			}
			slot := int(cur.slot)
			if slot != 0 {
				// An earlier attempt staged this target. If the device has connected with what it wrote,
				// that attempt delivered it: nothing to send, only the confirmation to wait for.
				staged := d.s1
				if slot == 2 {
					staged = d.s2
				}
				if staged != nil && bytes.Equal(staged, d.authDigest) {
					running = append(running, t.Seq)
					out[i].Slot = slot
					continue
				}
			} else {
				slot = freeSlot(d.s1, d.s2, d.authDigest)
				if slot == 0 {
					fail(fleet.RotateAmbiguous)
					continue
				}
			}
			out[i].Slot, out[i].Send = slot, true
			wIDs = append(wIDs, t.DeviceID)
			wSlots = append(wSlots, int16(slot))
			wDigests = append(wDigests, w.Digest)
			wSeqs = append(wSeqs, t.Seq)
		}
		if len(wIDs) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN u.slot = 1 THEN u.digest ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN u.slot = 2 THEN u.digest ELSE d.secret2_hash END,
					updated_at = now()
				FROM unnest($1::text[], $2::smallint[], $3::bytea[]) AS u(id, slot, digest) WHERE d.id = u.id`,
				wIDs, wSlots, wDigests); err != nil {
				return fmt.Errorf("write new digests of job %s: %w", job, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE job_devices j SET state = 'dispatched', cred_slot = u.slot, updated_at = now()
				FROM unnest($2::bigint[], $3::smallint[]) AS u(seq, slot) WHERE j.job_id = $1 AND j.seq = u.seq`,
				job, wSeqs, wSlots); err != nil {
				return fmt.Errorf("mark targets of job %s dispatched: %w", job, err)
			}
		}
		if len(running) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE job_devices SET state = 'running', updated_at = now() WHERE job_id = $1 AND seq = ANY($2)`,
				job, running); err != nil {
				return fmt.Errorf("record delivered targets of job %s: %w", job, err)
			}
		}
		return recordAll(ctx, tx, job, outs)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// freeSlot is the slot a rotation writes into: the one the device did not authenticate with last, or else
// the empty one; 0 when both hold a digest and neither is known to be in use.
func freeSlot(s1, s2, used []byte) int {
	switch {
	case used != nil && bytes.Equal(used, s1):
		return 2
	case used != nil && bytes.Equal(used, s2):
		return 1
	case s2 == nil:
		return 2
	case s1 == nil:
		return 1
	}
	return 0
}

// FinishRotationSends records the outcomes of a rotation batch's deliveries and clears the slots of the
// secrets that did not reach their device, in one transaction (fleet.RotateStore).
func (r *Registry) FinishRotationSends(ctx context.Context, job string, outs []fleet.JobOutcome, undos []fleet.RotationUndo) error {
	if len(outs) == 0 && len(undos) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if len(undos) > 0 {
			ids := make([]string, len(undos))
			slots := make([]int16, len(undos))
			digests := make([][]byte, len(undos))
			for i, u := range undos {
				ids[i], slots[i], digests[i] = u.DeviceID, int16(u.Slot), u.Digest
			}
			// Devices first, in id order (unnest keeps the order of the sorted input), then the targets.
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN u.slot = 1 AND d.secret1_hash = u.digest THEN NULL ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN u.slot = 2 AND d.secret2_hash = u.digest THEN NULL ELSE d.secret2_hash END,
					updated_at = now()
				FROM (SELECT * FROM unnest($1::text[], $2::smallint[], $3::bytea[]) AS t(id, slot, digest) ORDER BY id) AS u
				WHERE d.id = u.id`, ids, slots, digests); err != nil {
				return fmt.Errorf("clear undelivered digests of job %s: %w", job, err)
			}
		}
		_, err := recordJobOutcomes(ctx, tx, job, outs)
		return err
	})
}

// CollectRotations completes the running targets of a rotation whose device has connected with its new
// slot's digest (fleet.RotateStore): the old slot is cleared, which every gateway hears of (the auth trigger)
// and which leaves the live session, authenticated with the new secret, in place.
func (r *Registry) CollectRotations(ctx context.Context, job string, validity time.Duration) (fleet.AckProgress, error) {
	var p fleet.AckProgress
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT d.id, j.seq, j.cred_slot FROM devices d
			JOIN job_devices j ON j.device_id = d.id AND j.job_id = $1 AND j.state = 'running'
			WHERE d.auth_digest IS NOT NULL
			AND d.auth_digest = CASE j.cred_slot WHEN 1 THEN d.secret1_hash WHEN 2 THEN d.secret2_hash END
			ORDER BY d.id FOR UPDATE OF d`, job)
		if err != nil {
			return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
		}
		var ids []string
		var seqs []int64
		var slots []int16
		for rows.Next() {
			var id string
			var seq int64
			var slot int16
			if err := rows.Scan(&id, &seq, &slot); err != nil {
				rows.Close()
				return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
			}
			ids, seqs, slots = append(ids, id), append(seqs, seq), append(slots, slot)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
		}
		if len(ids) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN u.slot = 2 THEN NULL ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN u.slot = 1 THEN NULL ELSE d.secret2_hash END,
					credential_expires_at = CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) ELSE d.credential_expires_at END,
					updated_at = now()
				FROM unnest($1::text[], $2::smallint[]) AS u(id, slot) WHERE d.id = u.id`, ids, slots, validity.Seconds()); err != nil {
				return fmt.Errorf("clear old slots of job %s: %w", job, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO device_events (device_id, kind, detail)
				SELECT u.id, $1, jsonb_build_object('jobId', $2::text, 'slot', u.slot)
				FROM unnest($3::text[], $4::smallint[]) AS u(id, slot)`, EventCredentialsRotated, job, ids, slots); err != nil {
				return fmt.Errorf("record rotations of job %s: %w", job, err)
			}
			tag, err := tx.Exec(ctx, `UPDATE job_devices SET state = 'succeeded', updated_at = now()
				WHERE job_id = $1 AND seq = ANY($2) AND state = 'running'`, job, seqs)
			if err != nil {
				return fmt.Errorf("record rotations of job %s: %w", job, err)
			}
			p.Acked = tag.RowsAffected()
		}
		return tx.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE d.online) FROM job_devices j
			JOIN devices d ON d.id = j.device_id WHERE j.job_id = $1 AND j.state = 'running'`, job).Scan(&p.Waiting, &p.WaitingOnline)
	})
	if err != nil {
		return fleet.AckProgress{}, err
	}
	return p, nil
}
