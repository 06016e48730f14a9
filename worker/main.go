// Command fleetflow-worker runs fleetflow's workflows and activities. Workers are stateless: start as many
// as the load needs, on one or many machines, all polling the same task queue.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "replay-check" {
		os.Exit(replayCheckMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg := config.FromEnv()
	flag.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "Postgres registry (FLEETFLOW_DATABASE_URL)")
	flag.StringVar(&cfg.TemporalAddress, "temporal-address", cfg.TemporalAddress, "Temporal frontend (TEMPORAL_ADDRESS or the temporal.toml profile's)")
	flag.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "Temporal namespace (TEMPORAL_NAMESPACE or the temporal.toml profile's)")
	flag.StringVar(&cfg.TaskQueue, "task-queue", cfg.TaskQueue, "task queue to poll (FLEETFLOW_TASK_QUEUE)")
	flag.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS servers, comma-separated, through which desired pushes and method calls reach the gateways (FLEETFLOW_NATS_URL; credentials as user:password@)")
	// The default comes from FLEETFLOW_NATS_URL, which may hold a password: -h shows it masked.
	flag.Lookup("nats-url").DefValue = channel.RedactURL(cfg.NATSURL)
	flag.StringVar(&cfg.NATSCA, "nats-ca", cfg.NATSCA, "CA file to verify tls:// NATS servers with (FLEETFLOW_NATS_CA; default: system roots)")
	caDir := os.Getenv("FLEETFLOW_DEVICE_CA_DIR")
	flag.StringVar(&caDir, "device-ca-dir", caDir, "directory of the fleet CA (ca.pem, ca-key.pem) that signs certificate renewals (FLEETFLOW_DEVICE_CA_DIR; default: .fleetflow/ca of the checkout, as `fleetflow ca init`)")
	metricsAddr := os.Getenv("FLEETFLOW_WORKER_METRICS")
	flag.StringVar(&metricsAddr, "metrics-listen", metricsAddr, "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9465; empty: off (FLEETFLOW_WORKER_METRICS)")
	opts := workerOptions{
		pool:          config.EnvInt("FLEETFLOW_DATABASE_POOL", 0),
		maxActivities: config.EnvInt("FLEETFLOW_WORKER_MAX_ACTIVITIES", 0),
		maxWorkflows:  config.EnvInt("FLEETFLOW_WORKER_MAX_WORKFLOW_TASKS", 0),
		stopTimeout:   fleetworker.DefaultStopTimeout,
		deployment:    os.Getenv("FLEETFLOW_WORKER_DEPLOYMENT"),
		buildID:       os.Getenv("FLEETFLOW_WORKER_BUILD_ID"),
	}
	if v := os.Getenv("FLEETFLOW_WORKER_STOP_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fleetflow-worker: FLEETFLOW_WORKER_STOP_TIMEOUT=%q: %v\n", v, err)
			os.Exit(2)
		}
		opts.stopTimeout = d
	}
	flag.IntVar(&opts.pool, "db-pool", opts.pool, "registry connections of this worker; 0: the database URL's pool_max_conns, at least 16 (FLEETFLOW_DATABASE_POOL)")
	flag.IntVar(&opts.maxActivities, "max-activities", opts.maxActivities, "activities run at once, at most the registry pool; 0: the pool less a quarter (FLEETFLOW_WORKER_MAX_ACTIVITIES)")
	flag.IntVar(&opts.maxWorkflows, "max-workflow-tasks", opts.maxWorkflows, "workflow tasks run at once; 0: the registry pool size (FLEETFLOW_WORKER_MAX_WORKFLOW_TASKS)")
	flag.DurationVar(&opts.stopTimeout, "stop-timeout", opts.stopTimeout, "on SIGTERM/SIGINT, how long running activities may finish before they are cancelled (FLEETFLOW_WORKER_STOP_TIMEOUT)")
	flag.StringVar(&opts.deployment, "deployment-name", opts.deployment, "Temporal Worker Deployment this worker is a version of; empty: unversioned (FLEETFLOW_WORKER_DEPLOYMENT)")
	flag.StringVar(&opts.buildID, "build-id", opts.buildID, "this worker's version (build id) in --deployment-name; run `fleetflow-worker replay-check` before making it current (FLEETFLOW_WORKER_BUILD_ID)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: fleetflow-worker [flags]\n       fleetflow-worker replay-check [flags]   (replay open workflows against this binary; -h for its flags)\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	servePprof(os.Getenv("FLEETFLOW_WORKER_PPROF"), log)
	if caDir == "" {
		caDir = defaultDeviceCADir()
	}
	opts.deviceCADir = caDir
	if err := run(ctx, cfg, opts, metricsAddr, log); err != nil {
		fmt.Fprintln(os.Stderr, "fleetflow-worker:", err)
		os.Exit(1)
	}
}

// servePprof exposes Go's profiler on addr (FLEETFLOW_WORKER_PPROF, for diagnosing a worker under a benchmark's
// load; off when empty).
func servePprof(addr string, log *slog.Logger) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("pprof listener", "err", err)
		return
	}
	go func() { _ = http.Serve(ln, mux) }()
}

// workerOptions are the worker's sizing and shutdown settings (docs/architecture.md, "Workers").
type workerOptions struct {
	pool, maxActivities, maxWorkflows int
	stopTimeout                       time.Duration
	deployment, buildID               string // Worker Deployment versioning (docs/architecture.md, "Worker versioning")
	// deviceCADir holds the fleet CA that signs certificate renewals (docs/architecture.md, "Certificate
	// renewal"); read at the first renewal, so a worker without one serves everything else.
	deviceCADir string
}

// defaultDeviceCADir is .fleetflow/ca of the checkout the worker runs in (or was built into), where
// `fleetflow ca init` puts the fleet CA by default; "" outside a checkout.
func defaultDeviceCADir() string {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(filepath.Dir(exe)))
	}
	for _, d := range starts {
		for {
			if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
				return filepath.Join(d, ".fleetflow", "ca")
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return ""
}

func run(ctx context.Context, cfg config.Config, opts workerOptions, metricsAddr string, log *slog.Logger) error {
	if opts.pool < 0 {
		return fmt.Errorf("registry pool %d: want 0 (from the database URL) or more", opts.pool)
	}
	if (opts.deployment == "") != (opts.buildID == "") {
		return fmt.Errorf("worker versioning needs both --deployment-name and --build-id (FLEETFLOW_WORKER_DEPLOYMENT, FLEETFLOW_WORKER_BUILD_ID)")
	}
	if opts.pool > 0 {
		// Known before connecting: refuse a bad setting without touching Postgres or Temporal.
		if _, _, err := fleetworker.Slots(opts.pool, opts.maxActivities, opts.maxWorkflows); err != nil {
			return err
		}
	}
	// Metrics are off unless asked for: then the registry's statements and the Temporal SDK report into one
	// registry served at /metrics. Interface-typed nils keep pgx and the SDK on their no-op paths otherwise.
	var (
		mreg    *metrics.Registry
		tracer  pgx.QueryTracer
		handler client.MetricsHandler
		probes  fleetworker.Probes
	)
	if metricsAddr != "" {
		mreg = metrics.NewRegistry()
		metrics.RegisterProcess(mreg, "worker")
		tracer = metrics.NewQueryTracer(mreg)
		h, err := metrics.NewTemporalHandler(mreg, log)
		if err != nil {
			return err
		}
		handler = h
		srv, err := metrics.Serve(metricsAddr, metrics.Handler(mreg), log)
		if err != nil {
			return err
		}
		defer srv.Close()
		probes.Register(srv)
		log.Info("serving metrics and probes", "url", srv.URL(), "readyz", "http://"+srv.Addr()+"/readyz")
	}
	reg, err := registry.OpenWithOptions(ctx, cfg.DatabaseURL, registry.Options{Tracer: tracer, MaxConns: int32(opts.pool),
		// The configuration wake-ups LISTEN (docs/architecture.md, "Connection pooling and LISTEN").
		ListenURL: cfg.DatabaseListenURL})
	if err != nil {
		return err
	}
	defer func() {
		reg.Close()
		log.Info("registry closed")
	}()
	probes.Registry = reg.Pool().Ping
	if mreg != nil {
		metrics.RegisterPool(mreg, reg.Pool())
	}
	topts, err := config.TemporalClientOptions(cfg.TemporalAddress, cfg.Namespace) // + temporal.toml, TEMPORAL_TLS*, TEMPORAL_API_KEY
	if err != nil {
		return err
	}
	topts.Logger, topts.MetricsHandler = tlog.NewStructuredLogger(log), handler
	c, err := client.Dial(topts)
	if err != nil {
		return fmt.Errorf("connect to temporal at %s: %w", cfg.TemporalAddress, err)
	}
	defer c.Close()
	probes.Temporal = func(ctx context.Context) error {
		_, err := c.CheckHealth(ctx, &client.CheckHealthRequest{})
		return err
	}
	ch := &lazyChannel{cfg: channel.Config{URL: cfg.NATSURL, CAFile: cfg.NATSCA, Name: "fleetflow-worker", Logger: log}}
	defer func() {
		ch.Close()
		log.Info("device channel closed")
	}()
	running := &fleetworker.Running{}
	fatal := make(chan error, 1)
	fo := fleetworker.Options{
		PoolSize:         int(reg.Pool().Config().MaxConns),
		MaxActivities:    opts.maxActivities,
		MaxWorkflowTasks: opts.maxWorkflows,
		StopTimeout:      opts.stopTimeout,
		Deployment:       opts.deployment,
		BuildID:          opts.buildID,
		Running:          running,
		// A worker that stops on its own (the namespace is gone, say) ends the process, as Run did.
		OnFatalError: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		},
	}
	wo, err := fo.WorkerOptions()
	if err != nil {
		return err
	}
	acts := activities.New(reg, ch)
	if opts.deviceCADir != "" {
		acts.CA = pki.NewSigner(opts.deviceCADir)
	}
	// One LISTEN connection wakes every configuration reconciler of this process (docs/architecture.md,
	// "Declarative configurations").
	feed := registry.NewChangeFeed(reg)
	feedCtx, stopFeed := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFeed()
	go feed.Run(feedCtx)
	acts.Changes = feed
	if acts.Fault, err = faultHook(log); err != nil {
		return err
	}
	w, err := fleetworker.NewWithOptions(c, cfg.TaskQueue, acts, fo)
	if err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	probes.SetPolling(true)
	log.Info("worker started", "task_queue", cfg.TaskQueue, "temporal", cfg.TemporalAddress,
		"registry_pool", fo.PoolSize, "max_activities", wo.MaxConcurrentActivityExecutionSize,
		"max_workflow_tasks", wo.MaxConcurrentWorkflowTaskExecutionSize, "stop_timeout", wo.WorkerStopTimeout,
		"deployment", opts.deployment, "build_id", opts.buildID)
	select {
	case <-ctx.Done():
	case err := <-fatal:
		probes.SetPolling(false)
		w.Stop()
		return fmt.Errorf("worker: %w", err)
	}
	// Stop polling first (readiness goes 503 at once), then let the running activities finish; those still
	// running at the stop timeout are cancelled, and since they heartbeat another worker retries them.
	probes.SetPolling(false)
	log.Info("stopping: no new tasks; waiting for running activities",
		"running", running.Total(), "by_type", running.Snapshot(), "stop_timeout", wo.WorkerStopTimeout)
	start := time.Now()
	w.Stop()
	log.Info("worker stopped", "waited", time.Since(start).Round(time.Millisecond), "still_running", running.Snapshot())
	return nil
}
