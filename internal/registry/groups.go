package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
)

// Groups are definitions, not operations (docs/architecture.md, "Groups"): each write below is one
// transaction on the group's own rows, made by the CLI like `twin set-tags`. What a group selects is
// resolved wherever a query is (compileQuery), so that every operation accepts a group alike.

// CreateGroup creates a dynamic group (q is its twin query, a plain SELECT * FROM devices WHERE …) or, with
// q empty, a static one. The query must compile as a target query, with the groups it names.
func (r *Registry) CreateGroup(ctx context.Context, name, q string) error {
	if err := fleet.ValidateGroupName(name); err != nil {
		return err
	}
	var text any
	if q != "" {
		parsed, err := query.Parse(q)
		if err != nil {
			return err
		}
		if parsed.Top > 0 || len(parsed.OrderBy) > 0 || len(parsed.GroupBy) > 0 || !parsed.Star {
			return &query.SemanticError{Msg: "a group's query selects devices by a condition: write SELECT * FROM devices WHERE … (no TOP, ORDER BY or GROUP BY)"}
		}
		text = q
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO device_groups (name, query) VALUES ($1, $2)", name, text); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return fmt.Errorf("group %s: %w", name, fleet.ErrGroupExists)
			}
			return fmt.Errorf("create group %s: %w", name, err)
		}
		// Compiled with the new row in place: a query naming an unknown group, or the group itself, fails here
		// and the group is not created.
		_, err := r.targetsSQL(ctx, tx, fleet.GroupQuery(name))
		return err
	})
}

// Group returns a group with its member count (fleet.GroupStore).
func (r *Registry) Group(ctx context.Context, name string) (fleet.Group, error) {
	var g fleet.Group
	var text *string
	err := r.pool.QueryRow(ctx, "SELECT name, query, created_at FROM device_groups WHERE name = $1", name).Scan(&g.Name, &text, &g.CreatedAt)
	if isNoRows(err) {
		return g, fmt.Errorf("group %s: %w", name, fleet.ErrGroupNotFound)
	}
	if err != nil {
		return g, fmt.Errorf("load group %s: %w", name, err)
	}
	if text == nil {
		g.Static = true
	} else {
		g.Query = *text
	}
	if g.Members, err = r.CountTargets(ctx, fleet.GroupQuery(name)); err != nil {
		return g, fmt.Errorf("count members of group %s: %w", name, err)
	}
	if g.UsedBy, err = runningUses(ctx, r.pool, name); err != nil {
		return g, err
	}
	configs, err := configurationUses(ctx, r.pool, name)
	if err != nil {
		return g, err
	}
	g.UsedBy = append(g.UsedBy, configs...)
	return g, nil
}

// ResolveGroup returns the query selecting a group's members (fleet.GroupStore).
func (r *Registry) ResolveGroup(ctx context.Context, name string) (string, error) {
	var ok bool
	if err := r.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM device_groups WHERE name = $1)", name).Scan(&ok); err != nil {
		return "", fmt.Errorf("load group %s: %w", name, err)
	}
	if !ok {
		return "", fmt.Errorf("group %s: %w", name, fleet.ErrGroupNotFound)
	}
	return fleet.GroupQuery(name), nil
}

// ListGroups lists every group with its member count, by name.
func (r *Registry) ListGroups(ctx context.Context) ([]fleet.Group, error) {
	rows, err := r.pool.Query(ctx, "SELECT name FROM device_groups ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	out := make([]fleet.Group, 0, len(names))
	for _, n := range names {
		g, err := r.Group(ctx, n)
		if errors.Is(err, fleet.ErrGroupNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// GroupMembers lists up to limit member ids of a group (devices not retired), in id order.
func (r *Registry) GroupMembers(ctx context.Context, name string, limit int) ([]string, error) {
	c, err := r.targetsSQL(ctx, r.pool, fleet.GroupQuery(name))
	if err != nil {
		return nil, err
	}
	args := append(append([]any(nil), c.Args...), limit)
	rows, err := r.pool.Query(ctx, "SELECT id FROM ("+c.SQL+") t ORDER BY id LIMIT $"+fmt.Sprint(len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("list members of group %s: %w", name, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list members of group %s: %w", name, err)
	}
	return ids, nil
}

// staticGroup locks a group's row and checks that it is static.
func staticGroup(ctx context.Context, tx pgx.Tx, name string) error {
	var text *string
	err := tx.QueryRow(ctx, "SELECT query FROM device_groups WHERE name = $1 FOR UPDATE", name).Scan(&text)
	if isNoRows(err) {
		return fmt.Errorf("group %s: %w", name, fleet.ErrGroupNotFound)
	}
	if err != nil {
		return fmt.Errorf("load group %s: %w", name, err)
	}
	if text != nil {
		return fmt.Errorf("group %s is dynamic (its members are the devices its query selects): %w", name, fleet.ErrGroupKind)
	}
	return nil
}

// AddGroupMembers adds devices to a static group and returns how many were new. Ids the registry does not
// hold are refused (listed in the error) and nothing is added: a typo must not pass silently.
func (r *Registry) AddGroupMembers(ctx context.Context, name string, ids []string) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if err := staticGroup(ctx, tx, name); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT u.id FROM unnest($1::text[]) AS u(id)
			WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = u.id AND d.status <> 'retired') ORDER BY u.id`, ids)
		if err != nil {
			return fmt.Errorf("check devices: %w", err)
		}
		unknown, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("check devices: %w", err)
		}
		if len(unknown) > 0 {
			unknown = slices.Compact(unknown)
			return fmt.Errorf("%w: %s", fleet.ErrNotFound, joinSample(unknown, 10))
		}
		tag, err := tx.Exec(ctx, `INSERT INTO device_group_members (group_name, device_id) SELECT $1, unnest($2::text[])
			ON CONFLICT DO NOTHING`, name, ids)
		if err != nil {
			return fmt.Errorf("add members to group %s: %w", name, err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}

// RemoveGroupMembers removes devices from a static group and returns how many were members.
func (r *Registry) RemoveGroupMembers(ctx context.Context, name string, ids []string) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if err := staticGroup(ctx, tx, name); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM device_group_members WHERE group_name = $1 AND device_id = ANY($2)", name, ids)
		if err != nil {
			return fmt.Errorf("remove members from group %s: %w", name, err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}

// DeleteGroup deletes a group, refused (fleet.ErrGroupInUse) while a running job or rollout selected its
// targets through it, a health rule's target names it, or another group's query names it.
func (r *Registry) DeleteGroup(ctx context.Context, name string) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM device_groups WHERE name = $1 FOR UPDATE", name).Scan(&one)
		if isNoRows(err) {
			return fmt.Errorf("group %s: %w", name, fleet.ErrGroupNotFound)
		}
		if err != nil {
			return fmt.Errorf("load group %s: %w", name, err)
		}
		ops, err := runningUses(ctx, tx, name)
		if err != nil {
			return err
		}
		configs, err := configurationUses(ctx, tx, name)
		if err != nil {
			return err
		}
		ops = append(ops, configs...)
		if len(ops) > 0 {
			hint := "wait for it to finish, or cancel it"
			switch {
			case slices.ContainsFunc(ops, func(op string) bool { return strings.HasPrefix(op, "configuration ") }):
				hint = "a configuration keeps it applied until `fleetflow config delete`; a health rule checks it until `fleetflow health rule delete`; a job or rollout until it finishes"
			case slices.ContainsFunc(ops, func(op string) bool { return strings.HasPrefix(op, "health rule ") }):
				hint = "a health rule checks it until `fleetflow health rule delete`; a job or rollout until it finishes"
			}
			return fmt.Errorf("group %s: %w: %s (%s)", name, fleet.ErrGroupInUse, joinSample(ops, 5), hint)
		}
		rows, err := tx.Query(ctx, "SELECT name, query FROM device_groups WHERE query IS NOT NULL AND name <> $1 ORDER BY name", name)
		if err != nil {
			return fmt.Errorf("load groups: %w", err)
		}
		var naming []string
		for rows.Next() {
			var other, text string
			if err := rows.Scan(&other, &text); err != nil {
				rows.Close()
				return fmt.Errorf("load groups: %w", err)
			}
			if p, err := query.Parse(text); err == nil && slices.Contains(query.GroupNames(p.Where), name) {
				naming = append(naming, other)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("load groups: %w", err)
		}
		if len(naming) > 0 {
			return fmt.Errorf("group %s: %w: the query of group %s names it", name, fleet.ErrGroupInUse, joinSample(naming, 5))
		}
		if _, err := tx.Exec(ctx, "DELETE FROM device_groups WHERE name = $1", name); err != nil {
			return fmt.Errorf("delete group %s: %w", name, err)
		}
		return nil
	})
}

// runningUses lists the running operations (jobs and rollouts not finished) that selected their targets
// through the group, and the health rules (docs/architecture.md, "Health rules") whose target names it, as
// "job ID", "rollout ID" or "health rule NAME".
func runningUses(ctx context.Context, q queryRower, name string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT replace(u.op_kind, '_', ' ') || ' ' || u.op_id FROM device_group_uses u
		LEFT JOIN jobs j ON u.op_kind = 'job' AND j.id = u.op_id
		LEFT JOIN rollouts ro ON u.op_kind = 'rollout' AND ro.id = u.op_id
		LEFT JOIN health_rules hr ON u.op_kind = '`+groupUseHealthRule+`' AND hr.name = u.op_id
		WHERE u.group_name = $1 AND (j.id IS NOT NULL AND j.finished_at IS NULL OR ro.id IS NOT NULL AND ro.finished_at IS NULL
			OR hr.name IS NOT NULL)
		ORDER BY u.used_at, u.op_id`, name)
	if err != nil {
		return nil, fmt.Errorf("load uses of group %s: %w", name, err)
	}
	ops, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("load uses of group %s: %w", name, err)
	}
	return ops, nil
}

// configurationUses lists the declarative configurations (docs/architecture.md, "Declarative configurations")
// that target the group, by --group or through a query that names it, as "configuration NAME": a
// configuration is an operation that never finishes by itself, and deleting its group would leave it
// selecting nothing (a paused one too, which resumes on the same target).
func configurationUses(ctx context.Context, q queryRower, name string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT name, target_group, target_query FROM configurations
		WHERE target_group = $1 OR target_query <> '' ORDER BY name`, name)
	if err != nil {
		return nil, fmt.Errorf("load configurations using group %s: %w", name, err)
	}
	defer rows.Close()
	var uses []string
	for rows.Next() {
		var config, group, text string
		if err := rows.Scan(&config, &group, &text); err != nil {
			return nil, fmt.Errorf("load configurations using group %s: %w", name, err)
		}
		if group == name {
			uses = append(uses, "configuration "+config)
			continue
		}
		if p, err := query.Parse(text); err == nil && slices.Contains(query.GroupNames(p.Where), name) {
			uses = append(uses, "configuration "+config)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load configurations using group %s: %w", name, err)
	}
	return uses, nil
}

// joinSample joins up to n strings and says how many more there are.
func joinSample(s []string, n int) string {
	out := ""
	for i, x := range s {
		if i == n {
			return out + fmt.Sprintf(" and %d more", len(s)-n)
		}
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// The registry is the groups' store.
var _ fleet.GroupStore = (*Registry)(nil)
