package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// TemporalCLIModule is what `go install` builds bin/temporal from. v1.5.1 is the newest release that
// `go install` accepts (later ones carry replace directives); the Makefile pins the same version.
const TemporalCLIModule = "github.com/temporalio/cli/cmd/temporal@v1.5.1"

// upTemporal makes the Temporal frontend available: ours if running, the user's if TEMPORAL_ADDRESS names a
// reachable one, else the CLI dev server with its UI, persisting to .fleetflow/temporal.db. Either way the
// project's search attributes end up registered.
func (s *Stack) upTemporal(ctx context.Context) error {
	const part = PartTemporal
	cfg := s.opts.Config
	addr := cfg.TemporalAddress
	host, port, err := splitPort(addr)
	if err != nil {
		return partErr(part, "TEMPORAL_ADDRESS %q is not host:port", addr)
	}
	if running, err := s.alreadyRunning(part, addr); running || err != nil {
		return err
	}

	if s.opts.ExplicitTemporal && Reachable(addr, 2*time.Second) {
		// Registering attributes on a shared cluster may be forbidden to us; the workflows then fail
		// visibly on their first upsert, so a warning is enough here.
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := s.temporalReady(rctx, nil); err != nil {
			slog.Warn("temporal: external server not healthy", "addr", addr, "err", err)
		}
		s.say("%-9s %-22s external (TEMPORAL_ADDRESS)", part, addr)
		return nil
	}
	if !IsLoopback(host) {
		return partErr(part, "TEMPORAL_ADDRESS points at %s, which does not answer; start that server or unset TEMPORAL_ADDRESS to use a local dev server", addr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if PortInUse(addr) {
		return partErr(part, "%s", portInUseMessage(port, "TEMPORAL_ADDRESS"))
	}
	uiPort, err := uiPort(cfg.TemporalUI)
	if err != nil {
		return partErr(part, "%v", err)
	}
	if PortInUse(fmt.Sprintf("%s:%d", host, uiPort)) {
		return partErr(part, "UI %s", portInUseMessage(uiPort, "FLEETFLOW_TEMPORAL_UI"))
	}
	if err := s.ensureTemporalCLI(ctx); err != nil {
		return err
	}

	args := []string{
		"server", "start-dev",
		"--ip", host, "--port", strconv.Itoa(port), "--ui-port", strconv.Itoa(uiPort),
		"--db-filename", filepath.Join(s.state, "temporal.db"),
		"--namespace", cfg.Namespace,
		"--log-level", "warn",
		// WAL roughly doubles workflow starts per second on the SQLite store; NORMAL sync is safe with WAL.
		"--sqlite-pragma", "journal_mode=WAL", "--sqlite-pragma", "synchronous=NORMAL",
	}
	for _, d := range searchattr.Definitions() {
		args = append(args, "--search-attribute", d.Flag())
	}
	l, err := s.launch(part, exec.Command(s.opts.TemporalCLI, args...), addr, "")
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.temporalReady(wctx, l.exited); err != nil {
		return s.fail(part, l, "did not start: "+err.Error())
	}
	s.say("%-9s %-22s started (pid %d, UI %s)", part, addr, l.pid.PID, cfg.TemporalUI)
	return nil
}

// uiPort is the port of the Temporal UI URL.
func uiPort(raw string) (int, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Port() == "" {
		return 0, fmt.Errorf("FLEETFLOW_TEMPORAL_UI %q has no port (want http://127.0.0.1:8233)", raw)
	}
	return strconv.Atoi(u.Port())
}

// ensureTemporalCLI builds bin/temporal when it is missing. Binaries are never downloaded: the CLI is built
// from the Go module proxy, which takes a few minutes once.
func (s *Stack) ensureTemporalCLI(ctx context.Context) error {
	if fileExists(s.opts.TemporalCLI) {
		return nil
	}
	if s.opts.TemporalCLI != filepath.Join(s.opts.Root, "bin", "temporal") {
		return partErr(PartTemporal, "%s does not exist; fix FLEETFLOW_TEMPORAL_CLI or unset it", s.opts.TemporalCLI)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return partErr(PartTemporal, "bin/temporal is missing and go is not on PATH; install Go and run `make deps`")
	}
	fmt.Fprintf(s.notice, "%-9s building bin/temporal with go install (first time only; takes a few minutes)\n", PartTemporal)
	logPath := s.logPath("temporal-build")
	f, err := os.Create(logPath)
	if err != nil {
		return partErr(PartTemporal, "open build log: %v", err)
	}
	defer func() { _ = f.Close() }()
	cmd := exec.CommandContext(ctx, gobin, "install", TemporalCLIModule)
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(s.opts.TemporalCLI))
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return &PartError{Part: PartTemporal, Msg: fmt.Sprintf("building bin/temporal failed (%v); last lines of %s:", err, s.rel(logPath)),
			Log: tailFrom(logPath, 0, 15)}
	}
	return nil
}

// temporalReady waits until the frontend answers a health check and knows the namespace, then registers any
// of the project's search attributes the namespace lacks (a temporal.db from an older checkout may predate
// one; start-dev only registers attributes when it creates the namespace).
func (s *Stack) temporalReady(ctx context.Context, exited <-chan struct{}) error {
	var last error
	for {
		last = s.checkTemporal(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("the server exited")
		case <-ctx.Done():
			return last
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *Stack) checkTemporal(ctx context.Context) error {
	cfg := s.opts.Config
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	opts := client.Options{HostPort: cfg.TemporalAddress, Namespace: cfg.Namespace}
	if s.opts.ExplicitTemporal {
		// The user's server may want TLS or an API key, set in a temporal.toml profile or TEMPORAL_* variables.
		var err error
		if opts, err = config.TemporalClientOptions(cfg.TemporalAddress, cfg.Namespace); err != nil {
			return err
		}
	}
	opts.Logger = tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))
	c, err := client.DialContext(cctx, opts)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	if _, err := c.CheckHealth(cctx, &client.CheckHealthRequest{}); err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if _, err := c.WorkflowService().DescribeNamespace(cctx, &workflowservice.DescribeNamespaceRequest{Namespace: cfg.Namespace}); err != nil {
		return fmt.Errorf("namespace %s: %w", cfg.Namespace, err)
	}
	return EnsureSearchAttributes(cctx, c, cfg.Namespace)
}

// EnsureSearchAttributes registers on the namespace every project search attribute it lacks, and fails when
// one exists with another type (the workflows' upserts would then fail).
func EnsureSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	have, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("list search attributes: %w", err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for _, d := range searchattr.Definitions() {
		t, ok := have.GetCustomAttributes()[d.Name]
		switch {
		case !ok:
			missing[d.Name] = d.Type
		case t != d.Type:
			return fmt.Errorf("search attribute %s is a %s on the server but fleetflow needs a %s; remove it (or, for the dev server, .fleetflow/temporal.db)", d.Name, t, d.Type)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace: namespace, SearchAttributes: missing,
	})
	if err != nil {
		return fmt.Errorf("add search attributes: %w", err)
	}
	return nil
}
