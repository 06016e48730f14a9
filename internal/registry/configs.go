package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// ConfigChannel is the NOTIFY channel that wakes configuration reconcilers (migration 011).
const ConfigChannel = "fleetflow_config"

// Config is a configurations row.
type Config struct {
	Spec      fleet.ConfigSpec  `json:"spec"`
	Keys      []string          `json:"keys"`
	Version   int64             `json:"version"`
	State     fleet.ConfigState `json:"state"`
	CreatedAt time.Time         `json:"createdAt"`
	UpdatedAt time.Time         `json:"updatedAt"`
}

// TargetSQL compiles an operation's target to a statement selecting device ids. A group is selected with
// IN_GROUP('name'), the query form every operation takes a group in, which the registry compiles with the
// group's definition (docs/architecture.md, "Declarative configurations"): so a configuration targets a
// group exactly as a job does.
func (r *Registry) TargetSQL(ctx context.Context, t fleet.Target) (*query.Compiled, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if t.Group != "" {
		if !groupName.MatchString(t.Group) {
			return nil, fmt.Errorf("group %q: %w: want a-z 0-9 . _ -", t.Group, fleet.ErrUnknownGroup)
		}
		return r.compileTarget(ctx, fleet.GroupQuery(t.Group))
	}
	return r.compileTarget(ctx, t.Query)
}

// CountTarget counts the devices a target selects now.
func (r *Registry) CountTarget(ctx context.Context, t fleet.Target) (int64, error) {
	c, err := r.TargetSQL(ctx, t)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") t", c.Args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count targets: %w", err)
	}
	return n, nil
}

// groupName is what a group's name may hold, so that it needs no quoting inside IN_GROUP('…').
var groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// compileTarget is the one place the configurations and maintenance windows compile a target query: where
// query compilation needs the registry (groups named in the query), it is done here.
func (r *Registry) compileTarget(ctx context.Context, text string) (*query.Compiled, error) {
	return r.targetsSQL(ctx, r.pool, text)
}

// param is the placeholder of the next argument after args.
func param(args []any) string { return "$" + strconv.Itoa(len(args)) }

const configColumns = "name, target_query, target_group, priority, section, patch, keys, metrics, version, state, created_at, updated_at"

func scanConfig(row pgx.Row) (Config, error) {
	var c Config
	var patch, metrics []byte
	var section, state string
	err := row.Scan(&c.Spec.Name, &c.Spec.Target.Query, &c.Spec.Target.Group, &c.Spec.Priority, &section, &patch, &c.Keys,
		&metrics, &c.Version, &state, &c.CreatedAt, &c.UpdatedAt)
	if err != nil {
		return c, err
	}
	c.Spec.Section, c.State, c.Spec.Patch = twin.Section(section), fleet.ConfigState(state), patch
	if err := json.Unmarshal(metrics, &c.Spec.Metrics); err != nil {
		return c, fmt.Errorf("configuration %s: metrics: %w", c.Spec.Name, err)
	}
	return c, nil
}

// GetConfig returns a configuration (fleet.ErrNotFound, wrapped, when there is none).
func (r *Registry) GetConfig(ctx context.Context, name string) (Config, error) {
	return getConfig(ctx, r.pool.QueryRow(ctx, "SELECT "+configColumns+" FROM configurations WHERE name = $1", name), name)
}

func getConfig(_ context.Context, row pgx.Row, name string) (Config, error) {
	c, err := scanConfig(row)
	if isNoRows(err) {
		return c, fmt.Errorf("configuration %s: %w", name, fleet.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("load configuration %s: %w", name, err)
	}
	return c, nil
}

// ListConfigs returns every configuration, highest priority first.
func (r *Registry) ListConfigs(ctx context.Context) ([]Config, error) {
	rows, err := r.pool.Query(ctx, "SELECT "+configColumns+" FROM configurations ORDER BY priority DESC, name")
	if err != nil {
		return nil, fmt.Errorf("list configurations: %w", err)
	}
	defer rows.Close()
	var out []Config
	for rows.Next() {
		c, err := scanConfig(rows)
		if err != nil {
			return nil, fmt.Errorf("list configurations: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// SaveConfig records a configuration (fleet.ConfigStore). Its target and metric queries must compile.
func (r *Registry) SaveConfig(ctx context.Context, spec fleet.ConfigSpec, version int64, state fleet.ConfigState) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if _, err := r.TargetSQL(ctx, spec.Target); err != nil {
		return fmt.Errorf("configuration %s: target: %w", spec.Name, err)
	}
	for _, m := range spec.Metrics {
		if _, err := r.compileTarget(ctx, m.Query); err != nil {
			return fmt.Errorf("configuration %s: metric %s: %w", spec.Name, m.Name, err)
		}
	}
	keys, err := spec.Keys()
	if err != nil {
		return err
	}
	metrics, err := json.Marshal(spec.Metrics)
	if err != nil {
		return fmt.Errorf("configuration %s: metrics: %w", spec.Name, err)
	}
	if spec.Metrics == nil {
		metrics = []byte("[]")
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var oldVersion int64
		var oldKeys []string
		var oldSection string
		err := tx.QueryRow(ctx, "SELECT version, keys, section FROM configurations WHERE name = $1 FOR UPDATE", spec.Name).
			Scan(&oldVersion, &oldKeys, &oldSection)
		exists := err == nil
		if err != nil && !isNoRows(err) {
			return fmt.Errorf("load configuration %s: %w", spec.Name, err)
		}
		switch {
		case exists && oldVersion > version:
			return nil // a late retry of an older save
		case exists && oldVersion == version:
			_, err := tx.Exec(ctx, "UPDATE configurations SET state = $2, updated_at = now() WHERE name = $1", spec.Name, string(state))
			if err != nil {
				return fmt.Errorf("save configuration %s: %w", spec.Name, err)
			}
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO configurations (name, target_query, target_group, priority, section, patch, keys, metrics, version, state)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			ON CONFLICT (name) DO UPDATE SET target_query = EXCLUDED.target_query, target_group = EXCLUDED.target_group,
				priority = EXCLUDED.priority, section = EXCLUDED.section, patch = EXCLUDED.patch, keys = EXCLUDED.keys,
				metrics = EXCLUDED.metrics, version = EXCLUDED.version, state = EXCLUDED.state, updated_at = now()`,
			spec.Name, spec.Target.Query, spec.Target.Group, spec.Priority, string(spec.Section), string(spec.Patch), keys,
			string(metrics), version, string(state))
		if err != nil {
			return fmt.Errorf("save configuration %s: %w", spec.Name, err)
		}
		if exists {
			// Who owns a key may have changed for the configurations sharing one with the old or the new
			// spec: their devices are evaluated again (their records stay; only keys that moved are written).
			all := append(slices.Clone(oldKeys), keys...)
			if err := markRivalsStale(ctx, tx, spec.Name, []string{oldSection, string(spec.Section)}, all, nil); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, 'config')", ConfigChannel)
		return err
	})
}

// markRivalsStale marks for re-evaluation the records of the other configurations of sections that set
// any of keys; only those among onlyRanked when it is not nil.
func markRivalsStale(ctx context.Context, tx pgx.Tx, name string, sections, keys, onlyRanked []string) error {
	sqlText := `UPDATE config_devices SET stale = true WHERE NOT stale AND config IN (
		SELECT name FROM configurations WHERE name <> $1 AND section = ANY($2) AND keys && $3)`
	args := []any{name, sections, keys}
	if onlyRanked != nil {
		sqlText += " AND config = ANY($4) AND device_id IN (SELECT device_id FROM config_devices WHERE config = $1)"
		args = append(args, onlyRanked)
	}
	if _, err := tx.Exec(ctx, sqlText, args...); err != nil {
		return fmt.Errorf("mark configurations overlapping %s for re-evaluation: %w", name, err)
	}
	return nil
}

// rival is another configuration of the same section that shares keys with the one being reconciled.
type rival struct {
	rank   fleet.ConfigRank
	target fleet.Target
	keys   []string
}

func loadRivals(ctx context.Context, tx pgx.Tx, name, section string, keys []string) ([]rival, error) {
	rows, err := tx.Query(ctx, `SELECT name, priority, target_query, target_group, keys FROM configurations
		WHERE name <> $1 AND section = $2 AND keys && $3 ORDER BY name`, name, section, keys)
	if err != nil {
		return nil, fmt.Errorf("load configurations overlapping %s: %w", name, err)
	}
	defer rows.Close()
	var out []rival
	for rows.Next() {
		var rv rival
		if err := rows.Scan(&rv.rank.Name, &rv.rank.Priority, &rv.target.Query, &rv.target.Group, &rv.keys); err != nil {
			return nil, fmt.Errorf("load configurations overlapping %s: %w", name, err)
		}
		out = append(out, rv)
	}
	return out, rows.Err()
}

// behindDevice is a targeted device whose record is behind, with the record as it stands.
type behindDevice struct {
	id          string
	tagsVersion int64
	hasRecord   bool
	version     int64
	keys        []string
	state       string
}

// ReconcileConfig brings up to limit devices that are behind up to date (fleet.ConfigStore). The
// configuration's row is locked for the transaction, so that two attempts of one configuration's reconcile
// never evaluate the same devices at once.
func (r *Registry) ReconcileConfig(ctx context.Context, name string, limit int) (fleet.ConfigReconciled, error) {
	var out fleet.ConfigReconciled
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		out = fleet.ConfigReconciled{}
		cfg, err := getConfig(ctx, tx.QueryRow(ctx, "SELECT "+configColumns+" FROM configurations WHERE name = $1 FOR UPDATE", name), name)
		if err != nil {
			return err
		}
		if cfg.State != fleet.ConfigActive {
			return nil
		}
		c, err := r.TargetSQL(ctx, cfg.Spec.Target)
		if err != nil {
			return fmt.Errorf("configuration %s: target: %w", name, err)
		}
		args := append([]any(nil), c.Args...)
		args = append(args, name)
		pName := param(args)
		args = append(args, cfg.Version)
		pVersion := param(args)
		args = append(args, limit)
		pLimit := param(args)
		rows, err := tx.Query(ctx, `SELECT t.id, d.tags_version, c.device_id IS NOT NULL, coalesce(c.version, 0), coalesce(c.keys, '{}'), coalesce(c.state, '')
			FROM (`+c.SQL+`) t JOIN devices d ON d.id = t.id
			LEFT JOIN config_devices c ON c.config = `+pName+` AND c.device_id = t.id
			WHERE c.device_id IS NULL OR c.version < `+pVersion+` OR c.tags_version < d.tags_version OR c.stale
			ORDER BY t.id LIMIT `+pLimit, args...)
		if err != nil {
			return fmt.Errorf("configuration %s: find devices behind: %w", name, err)
		}
		var devs []behindDevice
		for rows.Next() {
			var b behindDevice
			if err := rows.Scan(&b.id, &b.tagsVersion, &b.hasRecord, &b.version, &b.keys, &b.state); err != nil {
				rows.Close()
				return fmt.Errorf("configuration %s: find devices behind: %w", name, err)
			}
			devs = append(devs, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("configuration %s: find devices behind: %w", name, err)
		}
		if len(devs) == 0 {
			return nil
		}
		out.Handled = len(devs)
		ids := make([]string, len(devs))
		for i, d := range devs {
			ids[i] = d.id
		}
		taken, err := takenKeys(ctx, r, tx, cfg, ids)
		if err != nil {
			return err
		}
		return r.applyConfig(ctx, tx, cfg, devs, taken, &out)
	})
	if err != nil {
		return fleet.ConfigReconciled{}, err
	}
	return out, nil
}

// takenKeys returns, per device among ids, the configuration's keys that higher-ranked configurations
// targeting the device own.
func takenKeys(ctx context.Context, r *Registry, tx pgx.Tx, cfg Config, ids []string) (map[string]map[string]bool, error) {
	rivals, err := loadRivals(ctx, tx, cfg.Spec.Name, string(cfg.Spec.Section), cfg.Keys)
	if err != nil {
		return nil, err
	}
	self := fleet.ConfigRank{Name: cfg.Spec.Name, Priority: cfg.Spec.Priority}
	taken := map[string]map[string]bool{}
	for _, rv := range rivals {
		if !rv.rank.Outranks(self) {
			continue
		}
		rc, err := r.TargetSQL(ctx, rv.target)
		if err != nil {
			// A rival whose target no longer resolves (a group deleted) claims nothing.
			slog.Warn("configuration target does not resolve; it claims no keys", "configuration", rv.rank.Name, "err", err)
			continue
		}
		args := append(append([]any(nil), rc.Args...), ids)
		rows, err := tx.Query(ctx, "SELECT id FROM ("+rc.SQL+") t WHERE id = ANY("+param(args)+"::text[])", args...)
		if err != nil {
			return nil, fmt.Errorf("configuration %s: devices of %s: %w", cfg.Spec.Name, rv.rank.Name, err)
		}
		matched, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("configuration %s: devices of %s: %w", cfg.Spec.Name, rv.rank.Name, err)
		}
		for _, id := range matched {
			if taken[id] == nil {
				taken[id] = map[string]bool{}
			}
			for _, k := range rv.keys {
				taken[id][k] = true
			}
		}
	}
	return taken, nil
}

// applyConfig writes what each device is owed and records every device's state with the write.
func (r *Registry) applyConfig(ctx context.Context, tx pgx.Tx, cfg Config, devs []behindDevice, taken map[string]map[string]bool, out *fleet.ConfigReconciled) error {
	n := len(devs)
	recIDs, recKeys, recStates, recErrs := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	recTags := make([]int64, 0, n)
	record := func(d behindDevice, keys []string, state fleet.ConfigDeviceState, tagsVersion int64, msg string) {
		if keys == nil {
			keys = []string{}
		}
		k, _ := json.Marshal(keys)
		recIDs, recKeys, recStates, recErrs = append(recIDs, d.id), append(recKeys, string(k)), append(recStates, string(state)), append(recErrs, msg)
		recTags = append(recTags, tagsVersion)
	}
	var patches []fleet.DevicePatch
	owned := map[string][]string{}
	byID := map[string]behindDevice{}
	for _, d := range devs {
		var own []string
		for _, k := range cfg.Keys {
			if !taken[d.id][k] {
				own = append(own, k)
			}
		}
		switch {
		case len(own) == 0:
			record(d, nil, fleet.ConfigSuperseded, d.tagsVersion, "")
		case d.hasRecord && d.version == cfg.Version && slices.Equal(own, d.keys) &&
			(d.state == string(fleet.ConfigApplied) || d.state == string(fleet.ConfigAcked)):
			// Retagged or re-evaluated, and it owns the same keys at the same version: nothing to write.
			record(d, own, fleet.ConfigDeviceState(d.state), d.tagsVersion, "")
		default:
			sub, err := fleet.SubPatch(cfg.Spec.Patch, own)
			if err != nil {
				return fmt.Errorf("configuration %s: %w", cfg.Spec.Name, err)
			}
			patches = append(patches, fleet.DevicePatch{DeviceID: d.id, Patch: sub})
			owned[d.id], byID[d.id] = own, d
		}
	}
	if len(patches) > 0 {
		results, err := patchTwinsTx(ctx, tx, cfg.Spec.Section, patches)
		if err != nil {
			return fmt.Errorf("configuration %s: %w", cfg.Spec.Name, err)
		}
		for i, res := range results {
			d := byID[res.DeviceID]
			switch {
			case res.Err != nil:
				record(d, owned[d.id], fleet.ConfigFailed, d.tagsVersion, res.Err.Error())
			case cfg.Spec.Section == twin.Tags:
				// Devices never see tags: written is acknowledged. The write moved the tags version itself.
				record(d, owned[d.id], fleet.ConfigAcked, res.Version, "")
				out.Written++
			default:
				record(d, owned[d.id], fleet.ConfigApplied, d.tagsVersion, "")
				out.Pushes = append(out.Pushes, fleet.DesiredPush{DeviceID: d.id, Version: res.Version, Patch: patches[i].Patch, Online: res.Online})
				out.Written++
			}
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO config_devices (config, device_id, version, tags_version, keys, state, error, stale)
		SELECT $1, v.id, $2, v.tv, ARRAY(SELECT jsonb_array_elements_text(v.k::jsonb)), v.st, v.err, false
		FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[]) AS v(id, tv, k, st, err)
		ON CONFLICT (config, device_id) DO UPDATE SET version = EXCLUDED.version, tags_version = EXCLUDED.tags_version,
			keys = EXCLUDED.keys, state = EXCLUDED.state, error = EXCLUDED.error, stale = false, updated_at = now()`,
		cfg.Spec.Name, cfg.Version, recIDs, recTags, recKeys, recStates, recErrs)
	if err != nil {
		return fmt.Errorf("configuration %s: record devices: %w", cfg.Spec.Name, err)
	}
	return nil
}

// CollectConfigAcks marks acknowledged devices (fleet.ConfigStore).
func (r *Registry) CollectConfigAcks(ctx context.Context, name string) (waiting, waitingOnline int64, err error) {
	_, err = r.pool.Exec(ctx, `UPDATE config_devices c SET state = 'acked', updated_at = now()
		FROM devices d WHERE c.config = $1 AND c.state = 'applied' AND d.id = c.device_id
		AND NOT EXISTS (SELECT 1 FROM unnest(c.keys) k WHERE d.reported -> k IS DISTINCT FROM d.desired -> k)`, name)
	if err != nil {
		return 0, 0, fmt.Errorf("configuration %s: collect acknowledgements: %w", name, err)
	}
	err = r.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE d.online) FROM config_devices c
		JOIN devices d ON d.id = c.device_id WHERE c.config = $1 AND c.state = 'applied'`, name).Scan(&waiting, &waitingOnline)
	if err != nil {
		return 0, 0, fmt.Errorf("configuration %s: collect acknowledgements: %w", name, err)
	}
	return waiting, waitingOnline, nil
}

// ConfigRepush returns the desired documents of connected devices that have not acknowledged a write made
// at least olderThan ago, and restarts their clock (fleet.ConfigStore).
func (r *Registry) ConfigRepush(ctx context.Context, name string, olderThan time.Duration, limit int) ([]fleet.DesiredPush, error) {
	rows, err := r.pool.Query(ctx, `WITH due AS (
			SELECT c.device_id FROM config_devices c JOIN devices d ON d.id = c.device_id
			WHERE c.config = $1 AND c.state = 'applied' AND d.online AND c.updated_at < now() - $2::interval
			ORDER BY c.device_id LIMIT $3 FOR UPDATE OF c SKIP LOCKED)
		UPDATE config_devices c SET updated_at = now() FROM due, devices d
		WHERE c.config = $1 AND c.device_id = due.device_id AND d.id = due.device_id
		RETURNING d.id, d.desired_version, d.online, d.desired`, name, olderThan, limit)
	if err != nil {
		return nil, fmt.Errorf("configuration %s: devices to push again: %w", name, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (fleet.DesiredPush, error) {
		var p fleet.DesiredPush
		err := row.Scan(&p.DeviceID, &p.Version, &p.Online, &p.Patch)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("configuration %s: devices to push again: %w", name, err)
	}
	return out, nil
}

// ConfigCounts counts the configuration's devices among those it targets now, and its metrics
// (fleet.ConfigStore).
func (r *Registry) ConfigCounts(ctx context.Context, name string) (fleet.ConfigCounts, error) {
	var cnt fleet.ConfigCounts
	cfg, err := r.GetConfig(ctx, name)
	if err != nil {
		return cnt, err
	}
	c, err := r.TargetSQL(ctx, cfg.Spec.Target)
	if err != nil {
		return cnt, fmt.Errorf("configuration %s: target: %w", name, err)
	}
	args := append(append([]any(nil), c.Args...), name)
	pName := param(args)
	args = append(args, cfg.Version)
	pVersion := param(args)
	err = r.pool.QueryRow(ctx, `SELECT count(*),
			count(*) FILTER (WHERE c.state IN ('applied', 'acked') AND c.version = `+pVersion+`),
			count(*) FILTER (WHERE c.state = 'acked' AND c.version = `+pVersion+`),
			count(*) FILTER (WHERE c.state = 'failed'),
			count(*) FILTER (WHERE c.state = 'superseded')
		FROM (`+c.SQL+`) t LEFT JOIN config_devices c ON c.config = `+pName+` AND c.device_id = t.id`, args...).
		Scan(&cnt.Targeted, &cnt.Applied, &cnt.Acked, &cnt.Failed, &cnt.Superseded)
	if err != nil {
		return cnt, fmt.Errorf("configuration %s: count devices: %w", name, err)
	}
	for _, m := range cfg.Spec.Metrics {
		mc, err := r.compileTarget(ctx, m.Query)
		if err != nil {
			return cnt, fmt.Errorf("configuration %s: metric %s: %w", name, m.Name, err)
		}
		margs := append(append([]any(nil), c.Args...), mc.Args...)
		var n int64
		err = r.pool.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") t JOIN ("+shiftPlaceholders(mc.SQL, len(c.Args))+") m ON m.id = t.id", margs...).Scan(&n)
		if err != nil {
			return cnt, fmt.Errorf("configuration %s: metric %s: %w", name, m.Name, err)
		}
		cnt.Metrics = append(cnt.Metrics, fleet.ConfigMetricCount{Name: m.Name, Count: n})
	}
	return cnt, nil
}

// ConfigConflicts lists, for each key the configuration shares with another of the same section, how many
// devices both target now and which of the two wins the key there.
func (r *Registry) ConfigConflicts(ctx context.Context, name string) ([]fleet.ConfigConflict, error) {
	cfg, err := r.GetConfig(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := r.TargetSQL(ctx, cfg.Spec.Target)
	if err != nil {
		return nil, fmt.Errorf("configuration %s: target: %w", name, err)
	}
	var out []fleet.ConfigConflict
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		rivals, err := loadRivals(ctx, tx, name, string(cfg.Spec.Section), cfg.Keys)
		if err != nil {
			return err
		}
		self := fleet.ConfigRank{Name: name, Priority: cfg.Spec.Priority}
		for _, rv := range rivals {
			rc, err := r.TargetSQL(ctx, rv.target)
			if err != nil {
				continue
			}
			var n int64
			err = tx.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") a JOIN ("+shiftPlaceholders(rc.SQL, len(c.Args))+") b ON b.id = a.id",
				append(append([]any(nil), c.Args...), rc.Args...)...).Scan(&n)
			if err != nil {
				return fmt.Errorf("configuration %s: overlap with %s: %w", name, rv.rank.Name, err)
			}
			if n == 0 {
				continue
			}
			winner := name
			if rv.rank.Outranks(self) {
				winner = rv.rank.Name
			}
			for _, k := range cfg.Keys {
				if slices.Contains(rv.keys, k) {
					out = append(out, fleet.ConfigConflict{Key: k, Other: rv.rank.Name, OtherPr: rv.rank.Priority, Devices: n, Winner: winner})
				}
			}
		}
		return nil
	})
	return out, err
}

// ConfigDevices lists up to limit of the configuration's device records in the given states (all when
// states is empty), in device order.
func (r *Registry) ConfigDevices(ctx context.Context, name string, states []fleet.ConfigDeviceState, limit int) ([]ConfigDevice, error) {
	st := make([]string, len(states))
	for i, s := range states {
		st[i] = string(s)
	}
	rows, err := r.pool.Query(ctx, `SELECT device_id, version, keys, state, error, updated_at FROM config_devices
		WHERE config = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2)) ORDER BY device_id LIMIT $3`, name, st, limit)
	if err != nil {
		return nil, fmt.Errorf("configuration %s: devices: %w", name, err)
	}
	defer rows.Close()
	var out []ConfigDevice
	for rows.Next() {
		var d ConfigDevice
		var state string
		if err := rows.Scan(&d.DeviceID, &d.Version, &d.Keys, &state, &d.Error, &d.UpdatedAt); err != nil {
			return nil, fmt.Errorf("configuration %s: devices: %w", name, err)
		}
		d.State = fleet.ConfigDeviceState(state)
		out = append(out, d)
	}
	return out, rows.Err()
}

// ConfigDevice is one device's record of a configuration.
type ConfigDevice struct {
	DeviceID  string                  `json:"deviceId"`
	Version   int64                   `json:"version"`
	Keys      []string                `json:"keys"`
	State     fleet.ConfigDeviceState `json:"state"`
	Error     string                  `json:"error,omitempty"`
	UpdatedAt time.Time               `json:"updatedAt"`
}

// DeleteConfig removes a configuration and its records (fleet.ConfigStore); deleting one that is gone is
// not an error. Devices keep the values it wrote.
func (r *Registry) DeleteConfig(ctx context.Context, name string) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var priority int
		var section string
		var keys []string
		err := tx.QueryRow(ctx, "SELECT priority, section, keys FROM configurations WHERE name = $1 FOR UPDATE", name).Scan(&priority, &section, &keys)
		if isNoRows(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("delete configuration %s: %w", name, err)
		}
		rivals, err := loadRivals(ctx, tx, name, section, keys)
		if err != nil {
			return err
		}
		self := fleet.ConfigRank{Name: name, Priority: priority}
		lower := []string{}
		for _, rv := range rivals {
			if self.Outranks(rv.rank) {
				lower = append(lower, rv.rank.Name)
			}
		}
		// The configurations it outranked may own its keys now on the devices they share.
		if err := markRivalsStale(ctx, tx, name, []string{section}, keys, lower); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM configurations WHERE name = $1", name); err != nil {
			return fmt.Errorf("delete configuration %s: %w", name, err)
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, 'config')", ConfigChannel)
		return err
	})
}

// ChangeFeed follows the registry's configuration wake-ups (fleet.DeviceChanges): devices inserted or
// retagged and configurations saved or deleted (Changed), devices connected or disconnected (Connected). One
// LISTEN connection serves every reconciler of a worker process.
type ChangeFeed struct {
	r         *Registry
	mu        sync.Mutex
	changed   chan struct{}
	connected chan struct{}
}

// NewChangeFeed returns a feed over r; Run makes it follow the registry.
func NewChangeFeed(r *Registry) *ChangeFeed {
	return &ChangeFeed{r: r, changed: make(chan struct{}), connected: make(chan struct{})}
}

// Changed returns a channel closed at the next insert, retag or configuration change after the call.
func (f *ChangeFeed) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Connected returns a channel closed at the next connection change after the call.
func (f *ChangeFeed) Connected() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connected
}

// fire wakes the waiters of a notice's kind (migration 011's payloads); anything but a connection change
// wakes both, so that a missed or unknown notice errs on the side of a full round.
func (f *ChangeFeed) fire(payload string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.connected)
	f.connected = make(chan struct{})
	if payload != "online" {
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// Run listens until ctx ends, reconnecting after errors. Each time LISTEN is in place it fires once, since
// changes may have been missed while it was not.
func (f *ChangeFeed) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := f.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		slog.Warn("configuration wake-up listener lost its connection; reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (f *ChangeFeed) listen(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, f.r.listenURL)
	if err != nil {
		return fmt.Errorf("listen: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+ConfigChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	f.fire("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		f.fire(n.Payload)
	}
}
