package registry

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

// queryRower reads: a *pgxpool.Pool or a pgx.Tx.
type queryRower interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// compileQuery compiles a twin query with what it depends on in the registry: the definitions of the groups
// it names (through other groups too; docs/architecture.md, "Groups") and the metadata scheme in force,
// which types its literals and warns about unknown tag paths (docs/architecture.md, "Metadata scheme").
// Every query an operator or an operation runs is compiled here, so every one accepts groups alike.
func (r *Registry) compileQuery(ctx context.Context, q queryRower, text string, opts query.Options) (*query.Compiled, error) {
	parsed, err := query.Parse(text)
	if err != nil {
		return nil, err
	}
	if opts.Groups, err = loadGroupDefs(ctx, q, query.GroupNames(parsed.Where)); err != nil {
		return nil, err
	}
	s, err := r.querySchemeOf(ctx, q)
	if err != nil {
		return nil, err
	}
	if s != nil {
		opts.Vocabulary = s
	}
	return query.Compile(text, opts)
}

// querySchemeTTL is how long compileQuery trusts the scheme it last read. A query must not pay a round trip
// for the scheme (a selective twin query takes well under a millisecond), and a scheme changes rarely: a
// query compiled within this long after a new version is set may still be typed by the previous one. A
// version set through this Registry is seen at once. Tag writes do not use it: they read the scheme in their
// own transaction.
const querySchemeTTL = time.Second

// querySchemeOf returns the scheme in force for compiling a query, read at most querySchemeTTL ago.
func (r *Registry) querySchemeOf(ctx context.Context, q queryRower) (*scheme.Scheme, error) {
	r.schemeMu.Lock()
	s, at := r.scheme, r.schemeAt
	r.schemeMu.Unlock()
	if !at.IsZero() && time.Since(at) < querySchemeTTL {
		return s, nil
	}
	s, err := activeScheme(ctx, q)
	if err != nil {
		return nil, err
	}
	r.schemeMu.Lock()
	r.scheme, r.schemeAt = s, time.Now()
	r.schemeMu.Unlock()
	return s, nil
}

// forgetQueryScheme makes the next query read the scheme again (a version was decided here).
func (r *Registry) forgetQueryScheme() {
	r.schemeMu.Lock()
	r.schemeAt = time.Time{}
	r.schemeMu.Unlock()
}

// targetsSQL compiles a target query to a statement selecting device ids, with its arguments.
func (r *Registry) targetsSQL(ctx context.Context, q queryRower, text string) (*query.Compiled, error) {
	return r.compileQuery(ctx, q, text, query.Options{Targets: true})
}

// loadGroupDefs loads the definitions of the named groups and of every group their conditions name, so that
// the compiler sees the whole closure. A name with no group is left out: the compiler reports it with its
// position in the query.
func loadGroupDefs(ctx context.Context, q queryRower, names []string) (map[string]query.GroupDef, error) {
	if len(names) == 0 {
		return nil, nil
	}
	defs := map[string]query.GroupDef{}
	for len(names) > 0 && len(defs) < 1000 {
		rows, err := q.Query(ctx, "SELECT name, query FROM device_groups WHERE name = ANY($1)", names)
		if err != nil {
			return nil, fmt.Errorf("load groups: %w", err)
		}
		var next []string
		for rows.Next() {
			var name string
			var text *string
			if err := rows.Scan(&name, &text); err != nil {
				rows.Close()
				return nil, fmt.Errorf("load groups: %w", err)
			}
			if text == nil {
				defs[name] = query.GroupDef{Static: true}
				continue
			}
			parsed, err := query.Parse(*text)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("group %s: %w", name, err)
			}
			defs[name] = query.GroupDef{Where: parsed.Where}
			for _, n := range query.GroupNames(parsed.Where) {
				if _, ok := defs[n]; !ok && !slices.Contains(next, n) {
					next = append(next, n)
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("load groups: %w", err)
		}
		names = next
	}
	return defs, nil
}

// recordGroupUses records, in the transaction that creates an operation's target set, which groups the
// operation selected its devices through: `group delete` refuses a group a running operation uses. The
// groups' rows are locked (shared), so a concurrent delete waits for the operation's creation to commit and
// then sees its use.
func recordGroupUses(ctx context.Context, tx pgx.Tx, kind, op string, groups []string) error {
	if len(groups) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, "SELECT name FROM device_groups WHERE name = ANY($1) ORDER BY name FOR SHARE", groups)
	if err != nil {
		return fmt.Errorf("lock groups: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("lock groups: %w", err)
	}
	if len(found) != len(groups) {
		for _, g := range groups {
			if !slices.Contains(found, g) {
				return fmt.Errorf("group %s: %w (deleted while the operation started)", g, fleet.ErrGroupNotFound)
			}
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO device_group_uses (group_name, op_kind, op_id)
		SELECT unnest($1::text[]), $2, $3 ON CONFLICT DO NOTHING`, groups, kind, op)
	if err != nil {
		return fmt.Errorf("record group uses of %s: %w", op, err)
	}
	return nil
}

// PreviewTargets counts the devices a target query selects and returns the compiler's warnings, for the CLI
// to show before it starts an operation (docs/architecture.md, "Metadata scheme").
func (r *Registry) PreviewTargets(ctx context.Context, text string) (int64, []string, error) {
	c, err := r.targetsSQL(ctx, r.pool, text)
	if err != nil {
		return 0, nil, err
	}
	var n int64
	if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") t", c.Args...).Scan(&n); err != nil {
		return 0, nil, fmt.Errorf("count targets: %w", err)
	}
	return n, c.Warnings, nil
}
