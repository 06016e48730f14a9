package registry

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// QueryResult is the answer to a twin query: whole twins for SELECT *, otherwise named columns.
type QueryResult struct {
	Star    bool
	Twins   []twin.Twin
	Columns []string
	Rows    [][]any
	// Warnings are the compiler's (tag paths the scheme does not know, literals typed by the scheme).
	Warnings []string `json:"-"`
}

// Objects returns the rows as objects keyed by column name (twins for SELECT *), the form scripts consume.
func (q *QueryResult) Objects() []any {
	out := make([]any, 0, max(len(q.Twins), len(q.Rows)))
	if q.Star {
		for _, t := range q.Twins {
			out = append(out, t)
		}
		return out
	}
	for _, r := range q.Rows {
		m := make(map[string]any, len(q.Columns))
		for i, c := range q.Columns {
			m[c] = r[i]
		}
		out = append(out, m)
	}
	return out
}

// Query runs a twin query. It is strongly consistent: it reads the registry itself, not an index that lags.
// The query is compiled to SQL in which every literal and path is a parameter.
func (r *Registry) Query(ctx context.Context, q string, opts query.Options) (*QueryResult, error) {
	c, err := r.compileQuery(ctx, r.pool, q, opts)
	if err != nil {
		return nil, err
	}
	rows, err := r.pool.Query(ctx, c.SQL, c.Args...)
	if err != nil {
		return nil, fmt.Errorf("run query: %w", err)
	}
	defer rows.Close()
	res := &QueryResult{Star: c.Star, Warnings: c.Warnings}
	for _, col := range c.Columns {
		res.Columns = append(res.Columns, col.Name)
	}
	for rows.Next() {
		if c.Star {
			t, err := scanTwin(rows)
			if err != nil {
				return nil, fmt.Errorf("read query result: %w", err)
			}
			res.Twins = append(res.Twins, t)
			continue
		}
		vals, err := scanColumns(rows, c.Columns)
		if err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, vals)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("run query: %w", err)
	}
	return res, nil
}

func scanColumns(rows pgx.Rows, cols []query.Column) ([]any, error) {
	vals, err := rows.Values()
	if err != nil {
		return nil, fmt.Errorf("read query result: %w", err)
	}
	out := make([]any, len(cols))
	for i, col := range cols {
		v := vals[i]
		if col.Kind == query.KindJSON {
			// pgx decodes jsonb into Go values already; only a driver that hands back bytes needs this.
			if b, ok := v.([]byte); ok {
				var x any
				if err := json.Unmarshal(b, &x); err == nil {
					v = x
				}
			}
		}
		out[i] = v
	}
	return out, nil
}
