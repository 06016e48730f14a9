package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Candidates are the registry values a shell completion offers.
type Candidates int

// What a completion may list.
const (
	// CandidateDevices: ids of devices that are not retired.
	CandidateDevices Candidates = iota
	// CandidateJobs: job ids, newest first.
	CandidateJobs
	// CandidateRollouts: rollout ids, newest first.
	CandidateRollouts
	// CandidateFirmware: firmware versions of the catalogue, newest first.
	CandidateFirmware
	// CandidateGroups: group names.
	CandidateGroups
	// CandidateTagPaths: the tag paths the scheme in force declares (docs/architecture.md, "Metadata scheme").
	CandidateTagPaths
	// CandidateHealthRules: health rule names (docs/architecture.md, "Health rules").
	CandidateHealthRules
)

// candidateSQL selects the values of each kind that start with a LIKE pattern ($1), at most $2 of them.
var candidateSQL = map[Candidates]string{
	CandidateDevices:     `SELECT id FROM devices WHERE status <> 'retired' AND id LIKE $1 ESCAPE '\' ORDER BY id LIMIT $2`,
	CandidateJobs:        `SELECT id FROM jobs WHERE id LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`,
	CandidateRollouts:    `SELECT id FROM rollouts WHERE id LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`,
	CandidateFirmware:    `SELECT version FROM firmware WHERE version LIKE $1 ESCAPE '\' ORDER BY created_at DESC LIMIT $2`,
	CandidateGroups:      `SELECT name FROM device_groups WHERE name LIKE $1 ESCAPE '\' ORDER BY name LIMIT $2`,
	CandidateHealthRules: `SELECT name FROM health_rules WHERE name LIKE $1 ESCAPE '\' ORDER BY name LIMIT $2`,
}

// Complete lists at most limit values of kind that start with prefix, for shell completion. A shell waits
// for it on every TAB, so it connects on its own with one read-only connection (no pool of 16, no schema
// check) and gives up after timeout; the caller shows nothing on any error.
func Complete(ctx context.Context, url string, kind Candidates, prefix string, limit int, timeout time.Duration) ([]string, error) {
	sql, ok := candidateSQL[kind]
	if !ok && kind != CandidateTagPaths {
		return nil, fmt.Errorf("complete: unknown kind %d", kind)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("complete: parse database url: %w", err)
	}
	cfg.MaxConns = 1
	cfg.ConnConfig.ConnectTimeout = timeout
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "fleetflow-completion"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("complete: connect: %w", err)
	}
	defer pool.Close()
	if kind == CandidateTagPaths {
		return completeTagPaths(ctx, pool, prefix, limit)
	}
	rows, err := pool.Query(ctx, sql, likePrefix(prefix), limit)
	if err != nil {
		return nil, fmt.Errorf("complete: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// likePrefix is a LIKE pattern matching the strings that start with p: LIKE's wildcards and its escape
// character in p match themselves.
func likePrefix(p string) string {
	var b strings.Builder
	b.Grow(len(p) + 1)
	for _, r := range p {
		if r == '\\' || r == '%' || r == '_' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('%')
	return b.String()
}

// completeTagPaths offers the declared tag paths that start with prefix.
func completeTagPaths(ctx context.Context, pool *pgxpool.Pool, prefix string, limit int) ([]string, error) {
	s, err := activeScheme(ctx, pool)
	if err != nil || s == nil {
		return nil, err
	}
	var out []string
	for _, p := range s.TagPaths() {
		if strings.HasPrefix(p, prefix) && len(out) < limit {
			out = append(out, p)
		}
	}
	return out, nil
}
