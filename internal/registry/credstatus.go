package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Credential kinds as a rotation treats a device (docs/architecture.md, "Certificate renewal"): it renews a
// certificate when it has one and either no secret or a newest session that presented a certificate
// (renewsCertificate), and gets a secret otherwise.
const (
	CredentialSecret      = "secret"
	CredentialCertificate = "certificate"
)

// credentialKindSQL is renewsCertificate in SQL, over devices d.
const credentialKindSQL = `CASE WHEN (d.cert_fingerprint IS NOT NULL OR d.cert2_fingerprint IS NOT NULL)
	AND ((d.secret1_hash IS NULL AND d.secret2_hash IS NULL) OR d.auth_digest = d.cert_fingerprint OR d.auth_digest = d.cert2_fingerprint)
	THEN 'certificate' ELSE 'secret' END`

// credentialEndSQL is when a device's credentials stop being accepted at CONNECT (NULL: never): the registry's
// expiry, and for a certificate device also its certificates' ends where recorded (the later of its two
// slots': it connects with either), whichever comes first — as the gateway enforces them.
const credentialEndSQL = `CASE WHEN ` + credentialKindSQL + ` = 'certificate'
	THEN least(d.credential_expires_at, greatest(d.cert_not_after, d.cert2_not_after)) ELSE d.credential_expires_at END`

// CredentialKindCounts are the devices of one credential kind by expiry, at a moment and for a window.
type CredentialKindCounts struct {
	Kind     string `json:"kind"`     // CredentialSecret or CredentialCertificate
	Devices  int64  `json:"devices"`  // not retired
	Expired  int64  `json:"expired"`  // refused at CONNECT now
	Expiring int64  `json:"expiring"` // not yet, but within the window
	NoExpiry int64  `json:"noExpiry"` // no expiry recorded
}

// ExpiringDevice is a device whose credentials have expired or expire within the window.
type ExpiringDevice struct {
	DeviceID  string    `json:"deviceId"`
	Kind      string    `json:"kind"`
	ExpiresAt time.Time `json:"expiresAt"`
	Online    bool      `json:"online"`
}

// MissedRotation is a device whose newest credential rotation closed without it: it did not connect with its
// new secret or certificate before the grace ended, and keeps both (fleet.RotateMissed).
type MissedRotation struct {
	DeviceID string    `json:"deviceId"`
	JobID    string    `json:"rotationId"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
}

// CredentialOverview is the fleet's credentials as `credentials status` shows them without a rotation id.
type CredentialOverview struct {
	Kinds []CredentialKindCounts `json:"kinds"` // secret, then certificate
	// Expiring are up to the limit's devices that have expired or expire within the window, soonest first.
	Expiring []ExpiringDevice `json:"expiring"`
	// Missed counts the devices whose newest rotation they missed; MissedDevices lists up to the limit's,
	// newest first.
	Missed        int64            `json:"missed"`
	MissedDevices []MissedRotation `json:"missedDevices"`
}

// CredentialOverview counts the devices that are not retired per credential kind by expiry (expired at now,
// expiring before now+within, without expiry), lists up to limit of those expired or expiring, soonest
// first, and the devices whose newest credential rotation timed out (missed the grace), newest first.
func (r *Registry) CredentialOverview(ctx context.Context, now time.Time, within time.Duration, limit int) (CredentialOverview, error) {
	out := CredentialOverview{Expiring: []ExpiringDevice{}, MissedDevices: []MissedRotation{}}
	horizon := now.Add(within)
	rows, err := r.pool.Query(ctx, `SELECT k, count(*), count(*) FILTER (WHERE e <= $1), count(*) FILTER (WHERE e > $1 AND e <= $2),
			count(*) FILTER (WHERE e IS NULL)
		FROM (SELECT `+credentialKindSQL+` AS k, `+credentialEndSQL+` AS e FROM devices d WHERE d.status <> 'retired') c
		GROUP BY k`, now, horizon)
	if err != nil {
		return out, fmt.Errorf("count credentials: %w", err)
	}
	counts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[CredentialKindCounts])
	if err != nil {
		return out, fmt.Errorf("count credentials: %w", err)
	}
	for _, k := range []string{CredentialSecret, CredentialCertificate} {
		c := CredentialKindCounts{Kind: k}
		for _, got := range counts {
			if got.Kind == k {
				c = got
			}
		}
		out.Kinds = append(out.Kinds, c)
	}

	rows, err = r.pool.Query(ctx, `SELECT id, k, e, online FROM (SELECT d.id, `+credentialKindSQL+` AS k, `+credentialEndSQL+` AS e, d.online
			FROM devices d WHERE d.status <> 'retired') c
		WHERE e <= $1 ORDER BY e, id LIMIT $2`, horizon, limit)
	if err != nil {
		return out, fmt.Errorf("list expiring credentials: %w", err)
	}
	if out.Expiring, err = pgx.CollectRows(rows, pgx.RowToStructByPos[ExpiringDevice]); err != nil {
		return out, fmt.Errorf("list expiring credentials: %w", err)
	}

	// A device's newest rotation target: a later rotation that reached it supersedes the one it missed.
	const missed = `FROM job_devices j JOIN jobs k ON k.id = j.job_id AND k.kind = 'rotate_credentials'
		JOIN devices d ON d.id = j.device_id AND d.status <> 'retired'
		WHERE j.state = 'timed_out' AND NOT EXISTS (SELECT 1 FROM job_devices j2 JOIN jobs k2 ON k2.id = j2.job_id
			AND k2.kind = 'rotate_credentials' WHERE j2.device_id = j.device_id AND j2.job_id <> j.job_id AND k2.created_at > k.created_at)`
	if err := r.pool.QueryRow(ctx, `SELECT count(*) `+missed).Scan(&out.Missed); err != nil {
		return out, fmt.Errorf("count missed rotations: %w", err)
	}
	rows, err = r.pool.Query(ctx, `SELECT j.device_id, j.job_id, coalesce(j.error, ''), j.updated_at `+missed+`
		ORDER BY j.updated_at DESC, j.device_id LIMIT $1`, limit)
	if err != nil {
		return out, fmt.Errorf("list missed rotations: %w", err)
	}
	if out.MissedDevices, err = pgx.CollectRows(rows, pgx.RowToStructByPos[MissedRotation]); err != nil {
		return out, fmt.Errorf("list missed rotations: %w", err)
	}
	return out, nil
}

// CredentialKindsOf counts the devices a target query (or, with ids, those devices) selects per credential
// kind, as a rotation would treat them: `credentials rotate --dry-run`. Retired, disabled and unknown
// devices are counted apart (a rotation reports them per device).
func (r *Registry) CredentialKindsOf(ctx context.Context, text string, ids []string) (secrets, certificates, inactive int64, err error) {
	var from string
	var args []any
	if ids != nil {
		from, args = `(SELECT DISTINCT unnest($1::text[]) AS id) t LEFT JOIN devices d ON d.id = t.id`, []any{ids}
	} else {
		c, err := r.targetsSQL(ctx, r.pool, text)
		if err != nil {
			return 0, 0, 0, err
		}
		from, args = `(`+c.SQL+`) t LEFT JOIN devices d ON d.id = t.id`, c.Args
	}
	err = r.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE d.status = $`+fmt.Sprint(len(args)+1)+` AND `+credentialKindSQL+` = 'secret'),
			count(*) FILTER (WHERE d.status = $`+fmt.Sprint(len(args)+1)+` AND `+credentialKindSQL+` = 'certificate'),
			count(*) FILTER (WHERE d.status IS DISTINCT FROM $`+fmt.Sprint(len(args)+1)+`)
		FROM `+from, append(args, string(fleet.StatusActive))...).Scan(&secrets, &certificates, &inactive)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("count targets per credential kind: %w", err)
	}
	return secrets, certificates, inactive, nil
}
