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
			c1, c2     []byte
			authDigest []byte
		}
		devs := map[string]*devRow{}
		rows, err := tx.Query(ctx, `SELECT id, status, secret1_hash, secret2_hash, cert_fingerprint, cert2_fingerprint, auth_digest FROM devices
			WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
		if err != nil {
			return fmt.Errorf("lock devices of job %s: %w", job, err)
		}
		for rows.Next() {
			var id string
			d := &devRow{}
			if err := rows.Scan(&id, &d.status, &d.s1, &d.s2, &d.c1, &d.c2, &d.authDigest); err != nil {
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
			cert  bool
		}
		targets := map[int64]target{}
		rows, err = tx.Query(ctx, `SELECT seq, state, coalesce(cred_slot, 0), cred_cert FROM job_devices WHERE job_id = $1 AND seq = ANY($2)
			ORDER BY seq FOR UPDATE`, job, seqs)
		if err != nil {
			return fmt.Errorf("lock targets of job %s: %w", job, err)
		}
		for rows.Next() {
			var seq int64
			var t target
			if err := rows.Scan(&seq, &t.state, &t.slot, &t.cert); err != nil {
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
		var wCerts []bool
		var wNotAfter []*time.Time
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
			case renewsCertificate(d.s1, d.s2, d.c1, d.c2, d.authDigest) != w.Cert || (cur.slot != 0 && cur.cert != w.Cert):
				fail(fleet.RotateKindChanged)
				continue
			}
			a, b := d.s1, d.s2
			if w.Cert {
				a, b = d.c1, d.c2
			}
			slot := int(cur.slot)
			if slot != 0 {
				// An earlier attempt staged this target. If the device has connected with what it wrote,
				// that attempt delivered it: nothing to send, only the confirmation to wait for.
				staged := a
				if slot == 2 {
					staged = b
				}
				if staged != nil && bytes.Equal(staged, d.authDigest) {
					running = append(running, t.Seq)
					out[i].Slot = slot
					continue
				}
			} else {
				slot = freeSlot(a, b, d.authDigest)
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
			wCerts = append(wCerts, w.Cert)
			var na *time.Time
			if w.Cert && !w.NotAfter.IsZero() {
				na = &w.NotAfter
			}
			wNotAfter = append(wNotAfter, na)
		}
		if len(wIDs) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN NOT u.cert AND u.slot = 1 THEN u.digest ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN NOT u.cert AND u.slot = 2 THEN u.digest ELSE d.secret2_hash END,
					cert_fingerprint = CASE WHEN u.cert AND u.slot = 1 THEN u.digest ELSE d.cert_fingerprint END,
					cert2_fingerprint = CASE WHEN u.cert AND u.slot = 2 THEN u.digest ELSE d.cert2_fingerprint END,
					cert_not_after = CASE WHEN u.cert AND u.slot = 1 THEN u.not_after ELSE d.cert_not_after END,
					cert2_not_after = CASE WHEN u.cert AND u.slot = 2 THEN u.not_after ELSE d.cert2_not_after END,
					updated_at = now()
				FROM unnest($1::text[], $2::smallint[], $3::bytea[], $4::boolean[], $5::timestamptz[]) AS u(id, slot, digest, cert, not_after)
				WHERE d.id = u.id`,
				wIDs, wSlots, wDigests, wCerts, wNotAfter); err != nil {
				return fmt.Errorf("write new digests of job %s: %w", job, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE job_devices j SET state = 'dispatched', cred_slot = u.slot, cred_cert = u.cert, updated_at = now()
				FROM unnest($2::bigint[], $3::smallint[], $4::boolean[]) AS u(seq, slot, cert) WHERE j.job_id = $1 AND j.seq = u.seq`,
				job, wSeqs, wSlots, wCerts); err != nil {
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

// renewsCertificate is the kind of a device's rotation (fleet.RotateStore.CertificateTargets): a
// certificate when it has one and either no secret or a newest session that presented a certificate.
func renewsCertificate(s1, s2, c1, c2, used []byte) bool {
	if c1 == nil && c2 == nil {
		return false
	}
	if s1 == nil && s2 == nil {
		return true
	}
	return used != nil && (bytes.Equal(used, c1) || bytes.Equal(used, c2))
}

// CertificateTargets reports which of the devices renew a certificate (fleet.RotateStore).
func (r *Registry) CertificateTargets(ctx context.Context, ids []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := r.pool.Query(ctx, `SELECT id, secret1_hash, secret2_hash, cert_fingerprint, cert2_fingerprint, auth_digest FROM devices
		WHERE id = ANY($1) AND status = 'active' AND (cert_fingerprint IS NOT NULL OR cert2_fingerprint IS NOT NULL)`, ids)
	if err != nil {
		return nil, fmt.Errorf("find certificate devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var s1, s2, c1, c2, used []byte
		if err := rows.Scan(&id, &s1, &s2, &c1, &c2, &used); err != nil {
			return nil, fmt.Errorf("find certificate devices: %w", err)
		}
		if renewsCertificate(s1, s2, c1, c2, used) {
			out[id] = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find certificate devices: %w", err)
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
			certs := make([]bool, len(undos))
			for i, u := range undos {
				ids[i], slots[i], digests[i], certs[i] = u.DeviceID, int16(u.Slot), u.Digest, u.Cert
			}
			// Devices first, in id order (unnest keeps the order of the sorted input), then the targets.
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN NOT u.cert AND u.slot = 1 AND d.secret1_hash = u.digest THEN NULL ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN NOT u.cert AND u.slot = 2 AND d.secret2_hash = u.digest THEN NULL ELSE d.secret2_hash END,
					cert_fingerprint = CASE WHEN u.cert AND u.slot = 1 AND d.cert_fingerprint = u.digest THEN NULL ELSE d.cert_fingerprint END,
					cert2_fingerprint = CASE WHEN u.cert AND u.slot = 2 AND d.cert2_fingerprint = u.digest THEN NULL ELSE d.cert2_fingerprint END,
					cert_not_after = CASE WHEN u.cert AND u.slot = 1 AND d.cert_fingerprint = u.digest THEN NULL ELSE d.cert_not_after END,
					cert2_not_after = CASE WHEN u.cert AND u.slot = 2 AND d.cert2_fingerprint = u.digest THEN NULL ELSE d.cert2_not_after END,
					updated_at = now()
				FROM (SELECT * FROM unnest($1::text[], $2::smallint[], $3::bytea[], $4::boolean[]) AS t(id, slot, digest, cert) ORDER BY id) AS u
				WHERE d.id = u.id`, ids, slots, digests, certs); err != nil {
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
		rows, err := tx.Query(ctx, `SELECT d.id, j.seq, j.cred_slot, j.cred_cert FROM devices d
			JOIN job_devices j ON j.device_id = d.id AND j.job_id = $1 AND j.state = 'running'
			WHERE d.auth_digest IS NOT NULL
			AND d.auth_digest = CASE WHEN j.cred_cert THEN CASE j.cred_slot WHEN 1 THEN d.cert_fingerprint WHEN 2 THEN d.cert2_fingerprint END
				ELSE CASE j.cred_slot WHEN 1 THEN d.secret1_hash WHEN 2 THEN d.secret2_hash END END
			ORDER BY d.id FOR UPDATE OF d`, job)
		if err != nil {
			return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
		}
		var ids []string
		var seqs []int64
		var slots []int16
		var certs []bool
		for rows.Next() {
			var id string
			var seq int64
			var slot int16
			var cert bool
			if err := rows.Scan(&id, &seq, &slot, &cert); err != nil {
				rows.Close()
				return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
			}
			ids, seqs, slots, certs = append(ids, id), append(seqs, seq), append(slots, slot), append(certs, cert)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("find confirmed rotations of job %s: %w", job, err)
		}
		if len(ids) > 0 {
			// A renewed certificate's device keeps an expiry only if it had one (the certificate's own end is
			// enforced by the TLS handshake): the new certificate's end, or --credential-validity if sooner.
			if _, err := tx.Exec(ctx, `UPDATE devices d SET
					secret1_hash = CASE WHEN NOT u.cert AND u.slot = 2 THEN NULL ELSE d.secret1_hash END,
					secret2_hash = CASE WHEN NOT u.cert AND u.slot = 1 THEN NULL ELSE d.secret2_hash END,
					cert_fingerprint = CASE WHEN u.cert AND u.slot = 2 THEN NULL ELSE d.cert_fingerprint END,
					cert2_fingerprint = CASE WHEN u.cert AND u.slot = 1 THEN NULL ELSE d.cert2_fingerprint END,
					cert_not_after = CASE WHEN u.cert AND u.slot = 2 THEN NULL ELSE d.cert_not_after END,
					cert2_not_after = CASE WHEN u.cert AND u.slot = 1 THEN NULL ELSE d.cert2_not_after END,
					credential_expires_at = CASE
						WHEN NOT u.cert THEN CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) ELSE d.credential_expires_at END
						WHEN $3 > 0 THEN least(now() + make_interval(secs => $3), CASE u.slot WHEN 1 THEN d.cert_not_after ELSE d.cert2_not_after END)
						WHEN d.credential_expires_at IS NOT NULL THEN coalesce(CASE u.slot WHEN 1 THEN d.cert_not_after ELSE d.cert2_not_after END, d.credential_expires_at)
						ELSE NULL END,
					updated_at = now()
				FROM unnest($1::text[], $2::smallint[], $4::boolean[]) AS u(id, slot, cert) WHERE d.id = u.id`, ids, slots, validity.Seconds(), certs); err != nil {
				return fmt.Errorf("clear old slots of job %s: %w", job, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO device_events (device_id, kind, detail)
				SELECT u.id, $1, jsonb_build_object('jobId', $2::text, 'slot', u.slot) || CASE WHEN u.cert THEN '{"certificate": true}'::jsonb ELSE '{}'::jsonb END
				FROM unnest($3::text[], $4::smallint[], $5::boolean[]) AS u(id, slot, cert)`, EventCredentialsRotated, job, ids, slots, certs); err != nil {
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

// CertificateSlots are a renewing device's certificate slots as `credentials status` shows them
// (docs/architecture.md, "Certificate renewal"): each slot's fingerprint (lower-case hex, "" when empty) and
// end (nil when not recorded: an enrolled certificate's), and the slot the newest session presented.
type CertificateSlots struct {
	DeviceID      string         `json:"deviceId"`
	State         fleet.JobState `json:"state"`
	Slot1         string         `json:"slot1Fingerprint,omitempty"`
	Slot1NotAfter *time.Time     `json:"slot1NotAfter,omitempty"`
	Slot2         string         `json:"slot2Fingerprint,omitempty"`
	Slot2NotAfter *time.Time     `json:"slot2NotAfter,omitempty"`
	InUse         int            `json:"slotInUse,omitempty"`
}

// RotationCertificates lists, in target order, up to limit devices of a rotation that renew a certificate,
// with their certificate slots as they are now.
func (r *Registry) RotationCertificates(ctx context.Context, job string, limit int) ([]CertificateSlots, error) {
	rows, err := r.pool.Query(ctx, `SELECT j.device_id, j.state, coalesce(encode(d.cert_fingerprint, 'hex'), ''), d.cert_not_after,
			coalesce(encode(d.cert2_fingerprint, 'hex'), ''), d.cert2_not_after,
			CASE WHEN d.auth_digest IS NULL THEN 0 WHEN d.auth_digest = d.cert_fingerprint THEN 1 WHEN d.auth_digest = d.cert2_fingerprint THEN 2 ELSE 0 END
		FROM job_devices j JOIN devices d ON d.id = j.device_id
		WHERE j.job_id = $1 AND j.cred_cert ORDER BY j.seq LIMIT $2`, job, limit)
	if err != nil {
		return nil, fmt.Errorf("list certificates of job %s: %w", job, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CertificateSlots, error) {
		var c CertificateSlots
		err := row.Scan(&c.DeviceID, &c.State, &c.Slot1, &c.Slot1NotAfter, &c.Slot2, &c.Slot2NotAfter, &c.InUse)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list certificates of job %s: %w", job, err)
	}
	return out, nil
}
