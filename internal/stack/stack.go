// Package stack runs fleetflow's local stack behind `fleetflow dev up | down | status`: a project-local
// Postgres cluster, the Temporal CLI dev server, one or more NATS nodes, one or more MQTT gateways and one or
// more workers. Each part is reused when the user points fleetflow at a running one (FLEETFLOW_DATABASE_URL,
// TEMPORAL_ADDRESS, FLEETFLOW_NATS_URL, FLEETFLOW_MQTT_URL) and started locally otherwise, so the same
// commands serve a fresh laptop and a machine that already runs some of the services.
//
// Started parts run detached (own session, so closing the terminal does not stop them), log to
// .fleetflow/logs/<part>.log and are recorded in .fleetflow/run/<part>.pid with their start time, so `dev down`
// stops exactly what `dev up` started and never a process that merely reused a pid.
package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/enroll"
)

// Part names, as shown by `dev status` and used for log and pid file names.
const (
	PartPostgres = "postgres"
	PartTemporal = "temporal"
	PartGateway  = "gateway" // gateways are gateway-1, gateway-2, ...
	partWorker   = "worker"  // workers are worker-1, worker-2, ...

	// PartSchema names the registry's schema in dev up's output and errors; it is a step, not a process.
	PartSchema = "schema"
)

// Health values of a part.
const (
	HealthRunning  = "running"  // started by this stack and alive
	HealthStopped  = "stopped"  // not running (and not external)
	HealthExternal = "external" // provided by the user's environment, reachable
	// HealthUnreachable is an external part that does not answer.
	HealthUnreachable = "unreachable"
	// HealthNotAnswering is a part we started whose process lives but whose port does not answer.
	HealthNotAnswering = "running, not answering"
)

// Options configure a Stack. Zero values select the defaults documented on each field.
type Options struct {
	// Root is the repository root; bin/ and .fleetflow/ live under it.
	Root   string
	Config config.Config
	// ExplicitDatabase, ExplicitTemporal, ExplicitMQTT and ExplicitNATS mark addresses the user chose
	// (environment or flag). An explicit address that answers is used as is; one that does not is started
	// locally when it is on this machine, and is an error otherwise.
	ExplicitDatabase, ExplicitTemporal, ExplicitMQTT, ExplicitNATS bool
	// NATSURL is FLEETFLOW_NATS_URL (default config.DefaultNATSURL): the NATS cluster the gateways, workers and CLI
	// use, and the client address of the first local node when the stack runs its own.
	NATSURL string
	// NATSClusterListen is where the first local NATS node listens for routes (FLEETFLOW_NATS_CLUSTER_LISTEN,
	// default DefaultNATSClusterListen); node j listens on its port + j−1.
	NATSClusterListen string
	// GatewayListen overrides where a locally started gateway listens (FLEETFLOW_GATEWAY_LISTEN); by default
	// it listens where FLEETFLOW_MQTT_URL points.
	GatewayListen string
	// TemporalCLI is the temporal binary (default $FLEETFLOW_TEMPORAL_CLI, else bin/temporal, which is built
	// with go install when missing).
	TemporalCLI string
	// GatewayBin is the fleetflow CLI binary run as `fleetflow gateway` (default bin/fleetflow).
	GatewayBin string
	// WorkerBin is the worker binary (default bin/fleetflow-worker).
	WorkerBin string
	// NATSBin is the fleetflow CLI binary run as `fleetflow nats-node` (default GatewayBin).
	NATSBin string
	// Workers, Gateways and NATSNodes are how many of each Up keeps running; 0 keeps those already
	// running, or starts one.
	Workers, Gateways, NATSNodes int
	// Out receives progress lines; nil discards them.
	Out io.Writer
}

// Stack manages the parts of one checkout.
type Stack struct {
	opts Options
	// notice receives messages about long waits (building the Temporal CLI) at once, even while the
	// part's other lines are buffered.
	notice io.Writer
	state  string // <root>/.fleetflow
	logs   string
	run    string
	// natsClientURLs are the client URLs of the NATS cluster Up settled on, handed to the gateways and
	// workers it starts.
	natsClientURLs []string
}

// New checks the options and fills in defaults. It creates nothing on disk.
func New(opts Options) (*Stack, error) {
	if opts.Root == "" {
		return nil, errors.New("stack: no repository root")
	}
	bin := filepath.Join(opts.Root, "bin")
	if opts.TemporalCLI == "" {
		opts.TemporalCLI = config.Env("FLEETFLOW_TEMPORAL_CLI", filepath.Join(bin, "temporal"))
	}
	if opts.GatewayBin == "" {
		opts.GatewayBin = filepath.Join(bin, "fleetflow")
	}
	if opts.WorkerBin == "" {
		opts.WorkerBin = filepath.Join(bin, "fleetflow-worker")
	}
	if opts.NATSBin == "" {
		opts.NATSBin = opts.GatewayBin
	}
	if opts.NATSURL == "" {
		opts.NATSURL = config.DefaultNATSURL
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Config.Namespace == "" {
		opts.Config.Namespace = config.DefaultNamespace
	}
	if opts.Config.TemporalProfile != "" {
		// A temporal.toml profile is the user's choice as much as TEMPORAL_ADDRESS is.
		opts.ExplicitTemporal = true
	}
	state := filepath.Join(opts.Root, ".fleetflow")
	return &Stack{opts: opts, notice: opts.Out, state: state, logs: filepath.Join(state, "logs"), run: filepath.Join(state, "run")}, nil
}

// PartStatus is one line of `dev status`.
type PartStatus struct {
	Name string
	Addr string
	// TLSAddr is the gateway's MQTT-over-TLS address, when it has one.
	TLSAddr string `json:",omitempty"`
	// Devices is the number of devices connected to a running gateway, read from its metrics (nil when
	// they cannot be read).
	Devices *int64 `json:",omitempty"`
	Health  string
	PID     int
	Note    string
}

// PartError is a failure of one part, worded as what to do about it. Log holds the last lines of the part's
// log when it failed to start.
type PartError struct {
	Part string
	Msg  string
	Log  string
}

// Error gives the part, what to do and, after a failed start, the end of its log.
func (e *PartError) Error() string {
	if e.Log == "" {
		return e.Part + ": " + e.Msg
	}
	return e.Part + ": " + e.Msg + "\n" + e.Log
}

func partErr(part, format string, args ...any) error {
	return &PartError{Part: part, Msg: fmt.Sprintf(format, args...)}
}

func (s *Stack) say(format string, args ...any) {
	fmt.Fprintf(s.opts.Out, format+"\n", args...)
}

func (s *Stack) pidPath(part string) string { return filepath.Join(s.run, part+".pid") }
func (s *Stack) logPath(part string) string { return filepath.Join(s.logs, part+".log") }

// rel shows a path relative to the repository root when it is inside it, for shorter messages.
func (s *Stack) rel(path string) string {
	if r, err := filepath.Rel(s.opts.Root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

// lock serialises dev up and dev down of one checkout, so two of them never start the same part twice.
func (s *Stack) lock() (func(), error) {
	if err := os.MkdirAll(s.run, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", s.rel(s.run), err)
	}
	if err := os.MkdirAll(s.logs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", s.rel(s.logs), err)
	}
	f, err := os.OpenFile(filepath.Join(s.run, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, errors.New("another `fleetflow dev` command is running in this checkout; wait for it")
	}
	s.adoptLegacyGateway()
	return func() { _ = f.Close() }, nil
}

// Up starts every part that is neither running nor external, in dependency order, and waits until each is
// ready. Parts already running are left alone, so Up is safe to repeat.
func (s *Stack) Up(ctx context.Context) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()

	// Postgres and Temporal do not depend on each other; starting them together saves seconds on every up.
	// Their lines are buffered so the output keeps the same order every time.
	var wg sync.WaitGroup
	var pgErr, tErr error
	var pgOut, tOut bytes.Buffer
	pg, tm := *s, *s
	pg.opts.Out, tm.opts.Out = &pgOut, &tOut
	wg.Add(2)
	go func() { defer wg.Done(); pgErr = pg.upPostgres(ctx) }()
	go func() { defer wg.Done(); tErr = tm.upTemporal(ctx) }()
	wg.Wait()
	_, _ = s.opts.Out.Write(pgOut.Bytes())
	_, _ = s.opts.Out.Write(tOut.Bytes())
	if err := errors.Join(pgErr, tErr); err != nil {
		return err
	}
	// The gateway and the workers refuse a registry whose schema is not theirs, so it is migrated first.
	if err := s.migrate(ctx); err != nil {
		return err
	}
	// Gateways and workers connect to NATS at start-up, so the nodes come first.
	if err := s.upNATS(ctx); err != nil {
		return err
	}
	if err := s.upGateways(ctx); err != nil {
		return err
	}
	return s.upWorkers(ctx)
}

// Down stops the parts this stack started, workers first, and removes their pid files. External parts and
// processes that merely reuse a recorded pid are left alone.
func (s *Stack) Down(ctx context.Context) error {
	if _, err := os.Stat(s.run); errors.Is(err, os.ErrNotExist) {
		s.say("nothing to stop")
		return nil
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()

	// stop stops one part and returns the line to print ("" when it has no pid file).
	stop := func(part string, fn func(*PIDFile) error) (string, error) {
		p, err := ReadPIDFile(s.pidPath(part))
		if err != nil || p == nil {
			return "", err
		}
		if !p.Alive() {
			_ = os.Remove(s.pidPath(part))
			return fmt.Sprintf("%-9s was not running (removed stale pid file)", part), nil
		}
		if err := fn(p); err != nil {
			return "", partErr(part, "stop pid %d: %v", p.PID, err)
		}
		_ = os.Remove(s.pidPath(part))
		return fmt.Sprintf("%-9s stopped (pid %d)", part, p.PID), nil
	}
	stopped := 0
	var errs []error
	report := func(line string, err error) {
		if err != nil {
			errs = append(errs, err)
		}
		if line != "" {
			s.say("%s", line)
			stopped++
		}
	}

	// stopAll stops parts of one kind in parallel (a worker may take a while to finish its in-flight
	// activities, a gateway to flush its last batch) and reports them in number order.
	stopAll := func(parts []string) {
		lines := make([]string, len(parts))
		errs := make([]error, len(parts))
		var wg sync.WaitGroup
		for i, part := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lines[i], errs[i] = stop(part, func(p *PIDFile) error { return stopProcess(p, syscall.SIGTERM, 30*time.Second) })
			}()
		}
		wg.Wait()
		for i := range parts {
			report(lines[i], errs[i])
		}
	}
	// The simulator first, so its devices do not reconnect in a loop while the gateways go away; the
	// workers before the gateways and NATS they use.
	report(stop(PartSimulator, func(p *PIDFile) error { return stopProcess(p, syscall.SIGTERM, 30*time.Second) }))
	stopAll(s.workerParts())
	stopAll(s.numberedParts(PartGateway))
	stopAll(s.numberedParts(partNATS))
	report(stop(PartTemporal, func(p *PIDFile) error { return stopProcess(p, syscall.SIGINT, 30*time.Second) }))
	report(stop(PartPostgres, func(p *PIDFile) error { return s.stopPostgres(ctx, p) }))
	if stopped == 0 && len(errs) == 0 {
		s.say("nothing to stop")
	}
	return errors.Join(errs...)
}

// Purge deletes the stack's state: the dev cluster (also when it lives outside the tree), the Temporal
// history, logs, pid files and the service token. It refuses while any part runs; call Down first.
func (s *Stack) Purge() error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	parts := append([]string{PartPostgres, PartTemporal, PartSimulator}, s.workerParts()...)
	parts = append(parts, s.numberedParts(PartGateway)...)
	parts = append(parts, s.numberedParts(partNATS)...)
	for _, part := range parts {
		if p, _ := ReadPIDFile(s.pidPath(part)); p.Alive() {
			return partErr(part, "still running (pid %d); run `fleetflow dev down` first", p.PID)
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.state, "pgdata-location")); err == nil {
		base := filepath.Dir(strings.TrimSpace(string(b)))
		if strings.HasPrefix(filepath.Base(base), "fleetflow-pg-") {
			if err := os.RemoveAll(base); err != nil {
				return fmt.Errorf("purge %s: %w", base, err)
			}
		}
	}
	if err := os.RemoveAll(s.state); err != nil {
		return fmt.Errorf("purge %s: %w", s.rel(s.state), err)
	}
	s.say("removed %s (database, Temporal history, logs)", s.rel(s.state))
	return nil
}

// Status reports every part. It changes nothing.
func (s *Stack) Status(ctx context.Context) ([]PartStatus, error) {
	cfg := s.opts.Config
	pgAddr, err := dbAddr(cfg.DatabaseURL)
	if err != nil {
		return nil, partErr(PartPostgres, "%v", err)
	}
	out := []PartStatus{
		s.partStatus(PartPostgres, pgAddr, s.opts.ExplicitDatabase),
		s.partStatus(PartTemporal, cfg.TemporalAddress, s.opts.ExplicitTemporal),
	}
	out = append(out, s.natsStatus()...)
	out = append(out, s.gatewayStatus(ctx)...)
	workers := s.workerParts()
	if len(workers) == 0 {
		out = append(out, PartStatus{Name: partWorker, Addr: "queue " + cfg.TaskQueue, Health: HealthStopped})
	}
	for _, w := range workers {
		st := s.partStatus(w, "", false)
		st.Addr = "queue " + cfg.TaskQueue
		out = append(out, st)
	}
	if p, _ := ReadPIDFile(s.pidPath(PartSimulator)); p != nil {
		out = append(out, s.partStatus(PartSimulator, "", false))
	}
	return out, nil
}

// TemporalUI is the Temporal UI's address, for the status output and links.
func (s *Stack) TemporalUI() string { return s.opts.Config.TemporalUI }

func (s *Stack) partStatus(part, addr string, explicit bool) PartStatus {
	st := PartStatus{Name: part, Addr: addr, Health: HealthStopped}
	p, err := ReadPIDFile(s.pidPath(part))
	switch {
	case err != nil:
		st.Note = err.Error()
	case p.Alive():
		st.Health, st.PID = HealthRunning, p.PID
		if p.Addr != "" {
			st.Addr = p.Addr
		}
		st.TLSAddr = p.TLSAddr
		if (st.Addr != "" && !Reachable(st.Addr, time.Second)) || (st.TLSAddr != "" && !Reachable(st.TLSAddr, time.Second)) {
			st.Health = HealthNotAnswering
			st.Note = "see " + s.rel(s.logPath(part))
		} else {
			st.Note = metricsNote(p.Metrics)
		}
	case p != nil:
		st.Note = "stale pid file"
	case explicit && addr != "":
		st.Health = HealthExternal
		if !Reachable(addr, 2*time.Second) {
			st.Health = HealthUnreachable
		}
	}
	return st
}

// childEnv is the environment of the gateway and the workers: ours, plus the effective addresses, so a
// child reaches exactly the parts this stack uses even when they came from command-line flags.
func (s *Stack) childEnv() ([]string, error) {
	cfg := s.opts.Config
	mqttURL := cfg.MQTTURL
	if !s.opts.ExplicitMQTT {
		mqttURL = "tcp://" + s.gatewayListen()
	}
	env := os.Environ()
	if cfg.MQTTCA == "" && s.ownTLS() && fileExists(s.CAFile()) {
		// Services given an ssl:// URL (by the user, or dev simulate's devices) verify the gateway with it.
		env = append(env, "FLEETFLOW_MQTT_CA="+s.CAFile())
	}
	if ca := filepath.Join(s.state, "ca", "ca.pem"); cfg.DeviceCA == "" && fileExists(ca) {
		// The fleet CA of `fleetflow ca init` (docs/architecture.md, "Device certificates"): the gateway
		// accepts the device certificates it signed.
		env = append(env, "FLEETFLOW_DEVICE_CA="+ca)
	}
	if dir := filepath.Join(s.state, "ca"); os.Getenv("FLEETFLOW_DEVICE_CA_DIR") == "" && fileExists(filepath.Join(dir, "ca.pem")) {
		// The workers sign certificate renewals with it (docs/architecture.md, "Certificate renewal").
		env = append(env, "FLEETFLOW_DEVICE_CA_DIR="+dir)
	}
	if os.Getenv(enroll.MasterKeyEnv) == "" && os.Getenv(enroll.MasterKeyFileEnv) == "" {
		// Zero-touch enrollment needs a master key on the gateways; the local stack keeps its own.
		f, err := s.ensureEnrollmentKey()
		if err != nil {
			return nil, err
		}
		env = append(env, enroll.MasterKeyFileEnv+"="+f)
	}
	return append(env,
		"FLEETFLOW_DATABASE_URL="+cfg.DatabaseURL,
		"TEMPORAL_ADDRESS="+cfg.TemporalAddress,
		"TEMPORAL_NAMESPACE="+cfg.Namespace,
		"FLEETFLOW_TASK_QUEUE="+cfg.TaskQueue,
		"FLEETFLOW_MQTT_URL="+mqttURL,
		"FLEETFLOW_NATS_URL="+s.natsURLForChildren(),
		"FLEETFLOW_GATEWAY_LISTEN="+s.gatewayListen(),
		"FLEETFLOW_GATEWAY_TLS_LISTEN="+s.gatewayTLSListen(),
		"FLEETFLOW_TEMPORAL_UI="+cfg.TemporalUI,
	), nil
}

// EnrollmentKeyFile is where the local stack keeps its enrollment master key (docs/architecture.md,
// "Zero-touch enrollment").
func (s *Stack) EnrollmentKeyFile() string { return filepath.Join(s.state, "enrollment.key") }

// ensureEnrollmentKey creates the local stack's enrollment master key on first use (mode 0600) and
// returns its file; an existing key is kept, since every group key is sealed under it.
func (s *Stack) ensureEnrollmentKey() (string, error) {
	f := s.EnrollmentKeyFile()
	if _, err := os.Stat(f); err == nil {
		return f, nil
	}
	k, err := enroll.NewKey()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return "", fmt.Errorf("enrollment master key: %w", err)
	}
	w, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return f, nil // another process made it first
	}
	if err != nil {
		return "", fmt.Errorf("enrollment master key: %w", err)
	}
	_, err = w.WriteString(enroll.EncodeKey(k) + "\n")
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("enrollment master key %s: %w", f, err)
	}
	return f, nil
}

// gatewayListen is where a locally started gateway listens: FLEETFLOW_GATEWAY_LISTEN when given, else the
// host:port of FLEETFLOW_MQTT_URL, so clients using that URL find it.
func (s *Stack) gatewayListen() string {
	if s.opts.GatewayListen != "" {
		return s.opts.GatewayListen
	}
	if a, err := mqttAddr(s.opts.Config.MQTTURL); err == nil {
		return a
	}
	return config.DefaultGatewayListen
}

// mqttAddr extracts host:port from an MQTT URL (tcp://host:port, mqtt://host, ...).
func mqttAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("MQTT URL %q is not of the form tcp://host:port", raw)
	}
	if u.Port() == "" {
		return u.Host + ":1883", nil
	}
	return u.Host, nil
}

// dbAddr extracts host:port from a Postgres URL.
func dbAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("database URL %q is not of the form postgres://user@host:port/db", raw)
	}
	if u.Port() == "" {
		return u.Hostname() + ":5432", nil
	}
	return u.Host, nil
}

// workerParts lists the worker pid files present, in numeric order (worker-1, worker-2, ..., worker-10).
func (s *Stack) workerParts() []string { return s.numberedParts(partWorker) }

func workerName(i int) string { return partName(partWorker, i) }
