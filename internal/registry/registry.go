// Package registry is the Postgres adapter for the device registry: identities, credential digests,
// connection state and twins, written in batches and read with strongly consistent queries.
// It is the source of truth for devices (docs/architecture.md, "The domain"); Temporal only holds operations
// in flight.
package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

// Registry is the device registry backed by a pgx pool. It is safe for concurrent use.
type Registry struct {
	pool *pgxpool.Pool
	url  string
	// listenURL is where ListenDeviceChanges connects: Options.ListenURL, else url.
	listenURL string
	// The scheme in force as last read for compiling queries, and when (see compileQuery).
	schemeMu sync.Mutex
	scheme   *scheme.Scheme
	schemeAt time.Time
}

// Open connects to Postgres and checks that the schema is at the version this binary needs (SchemaVersion).
// It never migrates: a database behind fails with an error matching ErrSchemaOutdated that says to run
// `fleetflow migrate` (Migrate), one ahead with an error matching ErrSchemaNewer.
func Open(ctx context.Context, url string) (*Registry, error) {
	return OpenWithOptions(ctx, url, Options{})
}

// Options tune OpenWithOptions. The zero value is what Open uses.
type Options struct {
	// Tracer observes every statement of the pool (a metrics exporter's, say). If it also implements
	// pgx.BatchTracer, pgx.CopyFromTracer or pgxpool.AcquireTracer, pgx calls those too.
	Tracer pgx.QueryTracer
	// MaxConns sizes the pool when positive, overriding the database URL's pool_max_conns and the default
	// floor of 16; a worker sizes its activity slots from it.
	MaxConns int32
	// ListenURL, when set, is the database URL of ListenDeviceChanges' connection instead of the pool's. LISTEN
	// needs one server session for as long as it listens, which a transaction-mode pooler (PgBouncer's
	// pool_mode=transaction) does not give: the pool may go through one, this URL must be direct or session-mode
	// (docs/architecture.md, "Connection pooling and LISTEN").
	ListenURL string
}

// OpenWithOptions is Open with options.
func OpenWithOptions(ctx context.Context, url string, opts Options) (*Registry, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
		cfg.MinConns = min(cfg.MinConns, cfg.MaxConns)
	}
	if opts.Tracer != nil {
		cfg.ConnConfig.Tracer = opts.Tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres at %s: %w", redact(url), err)
	}
	r := &Registry{pool: pool, url: url, listenURL: url}
	if opts.ListenURL != "" {
		if _, err := pgx.ParseConfig(opts.ListenURL); err != nil {
			pool.Close()
			return nil, fmt.Errorf("parse database listen url: %w", err)
		}
		r.listenURL = opts.ListenURL
	}
	if err := r.checkSchema(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return r, nil
}

// Pool exposes the pool for benchmarks and tests that compare with hand-written SQL.
func (r *Registry) Pool() *pgxpool.Pool { return r.pool }

// Close releases the pool.
func (r *Registry) Close() { r.pool.Close() }

// redact hides a password in a connection URL for error messages.
func redact(url string) string {
	at := strings.LastIndex(url, "@")
	scheme := strings.Index(url, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return url
	}
	userinfo := url[scheme+3 : at]
	if i := strings.Index(userinfo, ":"); i >= 0 {
		return url[:scheme+3] + userinfo[:i] + ":***" + url[at:]
	}
	return url
}

// notFound wraps ErrNotFound with the device id.
func notFound(id string) error { return fmt.Errorf("device %s: %w", id, fleet.ErrNotFound) }

// isNoRows reports whether err is pgx's "no rows".
func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
