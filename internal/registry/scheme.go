package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

// schemeCache holds compiled scheme versions by the digest of their documents, not by version number:
// one process may hold registries of several databases (tests do), whose version 1 differ. A scheme is
// compiled once per process and version, not per twin write.
var schemeCache = struct {
	sync.Mutex
	m map[string]*scheme.Scheme
}{m: map[string]*scheme.Scheme{}}

// schemeDigest is the cache key of a scheme row, as SQL over the schemes table.
const schemeDigest = "md5(tags::text || coalesce(reported::text, ''))"

// activeScheme returns the scheme in force, compiled, or nil when none is set (docs/architecture.md,
// "Metadata scheme").
func activeScheme(ctx context.Context, q queryRower) (*scheme.Scheme, error) {
	return loadScheme(ctx, q, "state = 'active' ORDER BY version DESC LIMIT 1")
}

// schemeVersion returns version v, compiled.
func schemeVersion(ctx context.Context, q queryRower, v int64) (*scheme.Scheme, error) {
	s, err := loadScheme(ctx, q, "version = $1", v)
	if err == nil && s == nil {
		return nil, fmt.Errorf("scheme version %d: %w", v, fleet.ErrNoScheme)
	}
	return s, err
}

// loadScheme reads the version and digest of the row where selects (a fixed condition, never input), and
// the documents only when the cache misses.
func loadScheme(ctx context.Context, q queryRower, where string, args ...any) (*scheme.Scheme, error) {
	var version int64
	var digest string
	err := q.QueryRow(ctx, "SELECT version, "+schemeDigest+" FROM schemes WHERE "+where, args...).Scan(&version, &digest)
	if isNoRows(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load scheme: %w", err)
	}
	key := fmt.Sprintf("%d/%s", version, digest)
	schemeCache.Lock()
	s := schemeCache.m[key]
	schemeCache.Unlock()
	if s != nil {
		return s, nil
	}
	var tags, reported []byte
	if err := q.QueryRow(ctx, "SELECT tags, reported FROM schemes WHERE version = $1", version).Scan(&tags, &reported); err != nil {
		return nil, fmt.Errorf("load scheme version %d: %w", version, err)
	}
	if s, err = scheme.Compile(version, tags, reported); err != nil {
		return nil, fmt.Errorf("scheme version %d: %w", version, err)
	}
	schemeCache.Lock()
	if len(schemeCache.m) > 64 {
		clear(schemeCache.m)
	}
	schemeCache.m[key] = s
	schemeCache.Unlock()
	return s, nil
}

// ActiveScheme returns the scheme in force, compiled, or nil when none is set: what the CLI validates
// manifest rows and tag patches with before it stages or starts anything.
func (r *Registry) ActiveScheme(ctx context.Context) (*scheme.Scheme, error) {
	return activeScheme(ctx, r.pool)
}

// checkTags validates a device's merged tags against s (nil: no scheme); the error wraps scheme.ErrViolation.
func checkTags(s *scheme.Scheme, id string, tags []byte) error {
	if s == nil {
		return nil
	}
	if err := s.ValidateTags(tags); err != nil {
		return fmt.Errorf("device %s: tags %w: %w", id, scheme.ErrViolation, err)
	}
	return nil
}

const schemeColumns = "version, tags, reported, state, allow_violations, set_by, created_at, activated_at"

func scanSchemeVersion(row pgx.Row) (fleet.SchemeVersion, error) {
	var v fleet.SchemeVersion
	var tags, reported []byte
	err := row.Scan(&v.Version, &tags, &reported, &v.State, &v.AllowViolations, &v.SetBy, &v.CreatedAt, &v.ActivatedAt)
	v.Tags, v.Reported = tags, reported
	return v, err
}

// SchemeVersions lists every version, newest first: `scheme history`.
func (r *Registry) SchemeVersions(ctx context.Context) ([]fleet.SchemeVersion, error) {
	rows, err := r.pool.Query(ctx, "SELECT "+schemeColumns+" FROM schemes ORDER BY version DESC")
	if err != nil {
		return nil, fmt.Errorf("load scheme history: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.SchemeVersion, error) { return scanSchemeVersion(row) })
	if err != nil {
		return nil, fmt.Errorf("load scheme history: %w", err)
	}
	return out, nil
}

// SchemeVersion returns one version; 0 means the one in force (fleet.ErrNoScheme when none is).
func (r *Registry) SchemeVersion(ctx context.Context, version int64) (fleet.SchemeVersion, error) {
	var row pgx.Row
	if version == 0 {
		row = r.pool.QueryRow(ctx, "SELECT "+schemeColumns+" FROM schemes WHERE state = 'active' ORDER BY version DESC LIMIT 1")
	} else {
		row = r.pool.QueryRow(ctx, "SELECT "+schemeColumns+" FROM schemes WHERE version = $1", version)
	}
	v, err := scanSchemeVersion(row)
	if isNoRows(err) {
		if version == 0 {
			return v, fleet.ErrNoScheme
		}
		return v, fmt.Errorf("scheme version %d: %w", version, fleet.ErrNotFound)
	}
	if err != nil {
		return v, fmt.Errorf("load scheme: %w", err)
	}
	return v, nil
}

// StageScheme records a candidate version (fleet.SchemeStore). Idempotent by setBy.
func (r *Registry) StageScheme(ctx context.Context, setBy string, tags, reported json.RawMessage, allow bool) (int64, error) {
	if _, err := scheme.Compile(0, tags, reported); err != nil {
		return 0, err
	}
	var rep any
	if len(reported) > 0 {
		rep = string(reported)
	}
	var v int64
	err := r.pool.QueryRow(ctx, `WITH ins AS (
			INSERT INTO schemes (tags, reported, allow_violations, set_by) VALUES ($1::jsonb, $2::jsonb, $3, $4)
			ON CONFLICT (set_by) DO NOTHING RETURNING version)
		SELECT version FROM ins UNION ALL SELECT version FROM schemes WHERE set_by = $4`,
		string(tags), rep, allow, setBy).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("stage scheme of %s: %w", setBy, err)
	}
	return v, nil
}

// ActiveSchemeVersion returns the number of the version in force (fleet.SchemeStore).
func (r *Registry) ActiveSchemeVersion(ctx context.Context) (int64, error) {
	var v int64
	err := r.pool.QueryRow(ctx, "SELECT version FROM schemes WHERE state = 'active' ORDER BY version DESC LIMIT 1").Scan(&v)
	if isNoRows(err) {
		return 0, fleet.ErrNoScheme
	}
	if err != nil {
		return 0, fmt.Errorf("load scheme: %w", err)
	}
	return v, nil
}

// keptChecks is how many checks keep their per-device violations; older checks keep only their counts.
const keptChecks = 5

// StartSchemeCheck records a check (fleet.SchemeStore).
func (r *Registry) StartSchemeCheck(ctx context.Context, check string, version int64) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO scheme_checks (id, version) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", check, version); err != nil {
			return fmt.Errorf("start scheme check %s: %w", check, err)
		}
		_, err := tx.Exec(ctx, `DELETE FROM scheme_violations WHERE check_id IN (
			SELECT id FROM scheme_checks WHERE id <> $1 ORDER BY started_at DESC, id DESC OFFSET $2)`, check, keptChecks-1)
		if err != nil {
			return fmt.Errorf("drop old scheme violations: %w", err)
		}
		return nil
	})
}

// SchemeCheckBatch checks one batch of devices (fleet.SchemeStore): one read, the validation in Go, and the
// violations and the check's counts written in one transaction, guarded by the cursor so that a batch is
// counted once whichever attempt commits it.
func (r *Registry) SchemeCheckBatch(ctx context.Context, check, after string, limit int) (fleet.SchemeCheckProgress, error) {
	var p fleet.SchemeCheckProgress
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var version int64
		err := tx.QueryRow(ctx, "SELECT version, cursor, checked, violating FROM scheme_checks WHERE id = $1 FOR UPDATE", check).
			Scan(&version, &p.Cursor, &p.Checked, &p.Violating)
		if isNoRows(err) {
			return fmt.Errorf("scheme check %s: %w", check, fleet.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("load scheme check %s: %w", check, err)
		}
		if p.Cursor != after {
			return nil // an earlier attempt committed this batch
		}
		s, err := schemeVersion(ctx, tx, version)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, tags, reported FROM devices WHERE id > $1 AND status <> 'retired'
			ORDER BY id LIMIT $2`, after, limit)
		if err != nil {
			return fmt.Errorf("read devices: %w", err)
		}
		var ids, found []string
		n := 0
		for rows.Next() {
			var id string
			var tags, reported []byte
			if err := rows.Scan(&id, &tags, &reported); err != nil {
				rows.Close()
				return fmt.Errorf("read devices: %w", err)
			}
			n++
			p.Cursor = id
			var vs []fleet.SchemeViolation
			for _, err := range []error{s.ValidateTags(tags), s.ValidateReported(reported)} {
				var se *scheme.Error
				if errors.As(err, &se) {
					for _, v := range se.Violations {
						vs = append(vs, fleet.SchemeViolation{Path: v.Path, Rule: v.Rule})
					}
				}
			}
			if len(vs) == 0 {
				continue
			}
			b, err := json.Marshal(vs)
			if err != nil {
				rows.Close()
				return fmt.Errorf("encode violations of %s: %w", id, err)
			}
			ids, found = append(ids, id), append(found, string(b))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read devices: %w", err)
		}
		p.Done = n < limit
		p.Checked += int64(n)
		p.Violating += int64(len(ids))
		if len(ids) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO scheme_violations (check_id, device_id, violations)
				SELECT $1, u.id, u.v::jsonb FROM unnest($2::text[], $3::text[]) AS u(id, v) ON CONFLICT DO NOTHING`, check, ids, found); err != nil {
				return fmt.Errorf("record violations: %w", err)
			}
		}
		_, err = tx.Exec(ctx, "UPDATE scheme_checks SET cursor = $2, checked = $3, violating = $4 WHERE id = $1",
			check, p.Cursor, p.Checked, p.Violating)
		if err != nil {
			return fmt.Errorf("record scheme check %s: %w", check, err)
		}
		return nil
	})
	return p, err
}

// FinishSchemeCheck ends a check and, with activate, decides its version (fleet.SchemeStore).
func (r *Registry) FinishSchemeCheck(ctx context.Context, check string, activate bool) (fleet.SchemeCheckEnd, error) {
	var e fleet.SchemeCheckEnd
	defer r.forgetQueryScheme()
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE scheme_checks SET finished_at = coalesce(finished_at, now()) WHERE id = $1
			RETURNING version, checked, violating`, check).Scan(&e.Version, &e.Checked, &e.Violating)
		if isNoRows(err) {
			return fmt.Errorf("scheme check %s: %w", check, fleet.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("finish scheme check %s: %w", check, err)
		}
		if activate {
			_, err = tx.Exec(ctx, `UPDATE schemes SET
				state = CASE WHEN $2 = 0 OR allow_violations THEN 'active' ELSE 'refused' END,
				activated_at = CASE WHEN $2 = 0 OR allow_violations THEN now() END
				WHERE version = $1 AND state = 'candidate'`, e.Version, e.Violating)
			if err != nil {
				return fmt.Errorf("decide scheme version %d: %w", e.Version, err)
			}
		}
		return tx.QueryRow(ctx, "SELECT state FROM schemes WHERE version = $1", e.Version).Scan(&e.State)
	})
	return e, err
}

// SchemeCheck is a scheme_checks row.
type SchemeCheck struct {
	ID         string     `json:"checkId"`
	Version    int64      `json:"version"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	Checked    int64      `json:"checked"`
	Violating  int64      `json:"violating"`
}

// GetSchemeCheck returns a check; "" means the newest.
func (r *Registry) GetSchemeCheck(ctx context.Context, id string) (SchemeCheck, error) {
	var c SchemeCheck
	const cols = "id, version, started_at, finished_at, checked, violating"
	var row pgx.Row
	if id == "" {
		row = r.pool.QueryRow(ctx, "SELECT "+cols+" FROM scheme_checks ORDER BY started_at DESC, id DESC LIMIT 1")
	} else {
		row = r.pool.QueryRow(ctx, "SELECT "+cols+" FROM scheme_checks WHERE id = $1", id)
	}
	err := row.Scan(&c.ID, &c.Version, &c.StartedAt, &c.FinishedAt, &c.Checked, &c.Violating)
	if isNoRows(err) {
		return c, fmt.Errorf("scheme check %q: %w", id, fleet.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("load scheme check: %w", err)
	}
	return c, nil
}

// SchemeCheckViolations lists up to limit violating devices of a check, in id order.
func (r *Registry) SchemeCheckViolations(ctx context.Context, check string, limit int) ([]fleet.DeviceViolations, error) {
	rows, err := r.pool.Query(ctx, "SELECT device_id, violations FROM scheme_violations WHERE check_id = $1 ORDER BY device_id LIMIT $2", check, limit)
	if err != nil {
		return nil, fmt.Errorf("load violations of %s: %w", check, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.DeviceViolations, error) {
		var d fleet.DeviceViolations
		var b []byte
		if err := row.Scan(&d.DeviceID, &b); err != nil {
			return d, err
		}
		return d, json.Unmarshal(b, &d.Violations)
	})
	if err != nil {
		return nil, fmt.Errorf("load violations of %s: %w", check, err)
	}
	return out, nil
}

// The registry is the scheme check's store.
var _ fleet.SchemeStore = (*Registry)(nil)
