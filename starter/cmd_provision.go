package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/manifest"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

type provisionFlags struct {
	file, format     string
	count, start     int64
	prefix           string
	tags             []string
	name             string
	credsOut         string
	awaitConnect     time.Duration
	wait             bool // show progress
	detach           bool
	batchSize        int64
	window           int
	out              *output
	heartbeatTimeout time.Duration
	batchesPerRun    int
	resume           string
	validity         string
	auth             string // authSecret or authX509
	caDir            string
}

// The values of provision --auth.
const (
	authSecret = "secret"
	authX509   = "x509"
)

func newProvisionCmd(g *globals) *cobra.Command {
	f := &provisionFlags{}
	cmd := &cobra.Command{
		Use:   "provision (--file devices.csv|devices.ndjson | --count N [--prefix sim-] [--tags k=v])",
		Short: "Create device identities, credentials and twins from a manifest with a ProvisionFleet workflow",
		Long: `provision stages a manifest in the registry and starts a ProvisionFleet workflow that validates and creates
the devices in batches. CSV manifests have an id column and one tag per other column; NDJSON manifests have
one {"id": ..., "tags": {...}} object per line. Bad rows are reported by line and the good rows are still
provisioned; devices that already exist are reported and their credentials left untouched.

Each new device's secret is generated here, written once to --creds-out (mode 0600; an existing file is
refused, never overwritten) and stored in the registry only as a digest: secrets never pass through Temporal. With --auth x509 each new device gets a
private key and a client certificate (subject = its id) signed by the fleet CA (` + "`fleetflow ca init`" + `,
--ca-dir) instead: key and certificate are written once to --creds-out, PEM in the same NDJSON file, and the
registry keeps only the certificate's SHA-256 fingerprint. The certificates are valid for
--credential-validity (default 1825d, at most until the CA expires), which the health check watches.

Progress is drawn on stderr when it is a terminal (--progress=false turns it off). --detach returns once the
workflow has started; the secrets then wait in <creds-out>.pending until "provision --resume" writes the
credentials file. The exit code is 2 when the manifest had invalid rows (the good rows are provisioned all
the same), 3 when devices did not report within --await-connect, and 130 when interrupted (the workflow goes
on; --resume picks it up).`,
		Example: `  fleetflow provision --file devices.csv
  fleetflow provision --count 1000 --prefix sim- --tags region=eu,site=ber-1 --creds-out sim.creds.ndjson
  fleetflow provision --file devices.ndjson --await-connect 5m --credential-validity 365d -o json
  fleetflow provision --file meters.csv --auth x509 --creds-out meters.creds.ndjson
  fleetflow provision --file big.csv --detach && fleetflow provision --resume provision-big-20261127-101500 --creds-out provision-big-20261127-101500.creds.ndjson`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.validity != "" {
				if _, err := numfmt.ParseDuration("--credential-validity", f.validity); err != nil {
					return usagef("%w", err)
				}
			}
			if f.auth != authSecret && f.auth != authX509 {
				return usagef("--auth %q: want secret or x509", f.auth)
			}
			if f.detach && f.resume != "" {
				return usagef("--detach and --resume contradict each other: --resume waits for a run")
			}
			return runProvision(cmd.Context(), g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.file, "file", "", "manifest file (.csv or .ndjson); - reads standard input with --format")
	fl.StringVar(&f.format, "format", "", "manifest format: csv or ndjson (default: from the file extension)")
	fl.Int64Var(&f.count, "count", 0, "generate N devices instead of reading a manifest")
	fl.Int64Var(&f.start, "start", 1, "first number of generated ids")
	fl.StringVar(&f.prefix, "prefix", "sim-", "id prefix of generated devices")
	fl.StringSliceVar(&f.tags, "tags", nil, "tags of generated devices, k=v[,k=v]")
	fl.StringVar(&f.name, "name", "", "operation name in the workflow id (default: the manifest's base name or the prefix)")
	fl.StringVar(&f.credsOut, "creds-out", "", "credentials file to write (default: <workflow id>.creds.ndjson)")
	fl.Var(newDurationFlag(&f.awaitConnect, "await-connect"), "await-connect", "wait up to this long for the new devices to connect and report capabilities (any duration, e.g. 30m or 2d)")
	fl.StringVar(&f.validity, "credential-validity", "", "the new credentials expire this long after creation (e.g. 365d), set by the workflow as it creates them; the health check warns before they do")
	// --wait was the progress flag before progress became the default on a terminal; it stays, hidden.
	fl.BoolVar(&f.wait, "wait", false, "show a progress bar while the workflow runs")
	_ = fl.MarkHidden("wait")
	fl.BoolVar(&f.wait, "progress", isTerminal(os.Stderr), "show a progress bar on stderr while the workflow runs (default: when stderr is a terminal)")
	fl.BoolVar(&f.detach, "detach", false, "start the workflow and return; collect the credentials later with --resume")
	fl.Int64Var(&f.batchSize, "batch-size", workflows.DefaultBatchSize, "rows per batch activity")
	fl.IntVar(&f.window, "window", workflows.DefaultWindow, "batch activities in flight at once")
	fl.DurationVar(&f.heartbeatTimeout, "heartbeat-timeout", workflows.DefaultHeartbeatTimeout, "how soon a batch on a crashed worker is retried")
	f.out = addOutputFlag(cmd)
	fl.StringVar(&f.auth, "auth", authSecret, "how the new devices authenticate: secret, or x509 (a client certificate from the fleet CA)")
	_ = cmd.RegisterFlagCompletionFunc("auth", cobra.FixedCompletions([]string{authSecret, authX509}, cobra.ShellCompDirectiveNoFileComp))
	addCADirFlag(cmd, &f.caDir)
	fl.StringVar(&f.resume, "resume", "", "wait for an earlier provisioning run (its workflow id) and write its credentials file")
	fl.IntVar(&f.batchesPerRun, "batches-per-run", 0, "batches per workflow run before continue-as-new (default: the workflow's)")
	_ = fl.MarkHidden("batches-per-run")
	return cmd
}

var nameSanitizer = regexp.MustCompile(`[^a-z0-9-]+`)

// operationID builds the workflow id: it says what the operation is, so the UI list reads like an operations
// log, and the timestamp makes an accidental double start of the same second a refused duplicate.
func operationID(kind, name string, now time.Time) string {
	name = strings.Trim(nameSanitizer.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if name == "" {
		name = "fleet"
	}
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("%s-%s-%s", kind, name, now.UTC().Format("20060102-150405"))
}

func runProvision(ctx context.Context, g *globals, f *provisionFlags) error {
	if f.resume != "" {
		return resumeProvision(ctx, g, f)
	}
	if (f.file == "") == (f.count == 0) {
		return usagef("give either --file or --count")
	}
	var src manifest.Reader
	name, label := f.name, ""
	if f.file != "" {
		format := manifest.Format(f.format)
		if format == "" {
			var err error
			if format, err = manifest.FormatOf(f.file); err != nil {
				return asUsage(err)
			}
		}
		var in io.Reader = os.Stdin
		if f.file != "-" {
			fh, err := os.Open(f.file)
			if err != nil {
				return fmt.Errorf("open manifest: %w", err)
			}
			defer fh.Close()
			in = fh
		}
		r, err := manifest.NewReader(bufio.NewReaderSize(in, 1<<20), format)
		if err != nil {
			// A manifest refused as a whole (no id column, unknown format): invalid input.
			return usagef("%s: %w", f.file, err)
		}
		src = r
		if name == "" {
			name = strings.TrimSuffix(filepath.Base(f.file), filepath.Ext(f.file))
		}
		label = filepath.Base(f.file)
	} else {
		if f.count < 0 {
			return usagef("--count must be positive")
		}
		tags, err := manifest.ParseTags(f.tags)
		if err != nil {
			return asUsage(err)
		}
		src = &manifest.Generated{Prefix: f.prefix, Count: f.count, Start: f.start, Tags: tags}
		if name == "" {
			name = strings.TrimRight(f.prefix, "-_.") + fmt.Sprintf("-%d", f.count)
		}
		label = fmt.Sprintf("%s devices %s…", numfmt.Thousands(f.count), f.prefix)
	}
	makeCred := newSecretCredential
	var certValidity time.Duration
	if f.auth == authX509 {
		// Loaded before anything is staged: without the CA there is nothing to sign with.
		var err error
		if makeCred, certValidity, err = certificateMaker(f.caDir, f.validity); err != nil {
			return err
		}
	}
	if f.credsOut != "" {
		// Checked again once the default path is known; this spares a refused run the manifest's staging.
		if err := credsPathsFree(f.credsOut, "provision"); err != nil {
			return err
		}
	}
	base := operationID("provision", name, time.Now())
	op := base
	began := time.Now()

	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()

	// Two runs in the same second get the same id; the second takes a numbered one instead of failing.
	for i := 2; ; i++ {
		used, err := reg.OperationExists(ctx, op)
		if err != nil {
			return err
		}
		if !used {
			break
		}
		op = fmt.Sprintf("%s-%d", base, i)
	}
	if f.credsOut == "" {
		f.credsOut = op + ".creds.ndjson"
	}
	pending := f.credsOut + ".pending"
	if err := credsPathsFree(f.credsOut, "provision"); err != nil {
		return err
	}
	workers := 1 // a secret costs next to nothing
	if f.auth == authX509 {
		workers = runtime.GOMAXPROCS(0)
	}
	// Staged rows hold credential digests. Workflows drop their own; the health check drops those of runs
	// that never started, but only where it is scheduled, so each new staging sweeps the stale ones too.
	if n, err := reg.DropStaleStaging(ctx, fleet.StaleStagingAfter); err != nil {
		slog.Warn("drop stale staged manifest rows", "err", err)
	} else if n > 0 {
		slog.Debug("dropped stale staged manifest rows", "rows", n, "olderThan", fleet.StaleStagingAfter)
	}
	in := workflows.ProvisionInput{Op: op, BatchSize: f.batchSize, Window: f.window,
		AwaitConnect: f.awaitConnect, HeartbeatTimeout: f.heartbeatTimeout, BatchesPerRun: f.batchesPerRun}
	if f.validity != "" {
		// Each batch sets the expiry of the devices it creates, in the transaction that creates them.
		if in.CredentialValidity, err = numfmt.ParseDuration("--credential-validity", f.validity); err != nil {
			return usagef("%w", err)
		}
	}
	if certValidity > 0 {
		// The registry's expiry follows the certificates' (from each device's creation, so a little after the
		// certificate's own end at most), for the health check's credential_expiring alert.
		in.CredentialValidity = certValidity
	}
	// The workflow starts as soon as the first chunk of the manifest is staged and follows the staging while
	// the rest is (docs/architecture.md, "Provisioning: staging and batches overlap").
	var run client.WorkflowRun
	var startErr error
	start := func(staged int64, done bool) error {
		if run != nil {
			return nil
		}
		slog.Debug("first chunk staged", "op", op, "rows", staged, "done", done, "elapsed", time.Since(began))
		in.Rows, in.Staging = staged, !done
		crashAt("before-start")
		run, startErr = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID:                    op,
			TaskQueue:             g.cfg.TaskQueue,
			WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
			StaticSummary: fmt.Sprintf("Provision the rows of %s", label),
			StaticDetails: fmt.Sprintf("Manifest: `%s`  \nBatch size: %d, window: %d  \nAwait connect: %s",
				label, f.batchSize, f.window, durationOrNo(f.awaitConnect)),
			TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet("provision"),
				searchattr.State.ValueSet("running"), searchattr.Total.ValueSet(staged)),
		}, workflows.ProvisionFleet, in)
		if startErr != nil {
			run = nil
			return startErr
		}
		crashAt("after-start")
		return nil
	}
	rows, err := stageManifest(ctx, reg, op, src, pending, makeCred, workers, in.BatchSize, start)
	if startErr != nil {
		// Nothing follows the staged rows: closed, so that nothing waits for them (the health check drops them).
		_ = reg.AbandonStaging(context.WithoutCancel(ctx), op)
		return startFailed(ctx, c, op, pending, fmt.Sprintf("fleetflow provision --resume %s --creds-out %s", op, f.credsOut), startErr)
	}
	if err == nil && run == nil {
		err = fmt.Errorf("stage %s: no chunk was committed", op) // cannot happen: the last chunk always commits
	}
	if err != nil && run == nil {
		// Nothing was staged, so no device can be created from these secrets.
		os.Remove(pending)
		return err
	}
	if err != nil {
		// The workflow runs on the chunks staged before the failure: closing the staging fails it at once
		// instead of after fleet.StagingStallAfter, and the secrets of the devices it created still reach the
		// credentials file below.
		if aerr := reg.AbandonStaging(context.WithoutCancel(ctx), op); aerr != nil {
			slog.Warn("close the staging", "op", op, "err", aerr)
		}
		fmt.Fprintf(os.Stderr, "staging %s stopped after %s rows: %v\n", op, numfmt.Thousands(rows), err)
		if werr := awaitProvision(ctx, g, c, reg, f, run, op, pending, began); werr != nil {
			return fmt.Errorf("%w\n(staging stopped: %v)", werr, err)
		}
		return fmt.Errorf("staging %s stopped after %s rows: %w", op, numfmt.Thousands(rows), err)
	}
	slog.Debug("manifest staged", "op", op, "rows", rows, "elapsed", time.Since(began))
	if !f.out.structured() || f.detach {
		fmt.Fprintf(os.Stderr, "started %s (%s rows staged)\n  %s\n", op, numfmt.Thousands(rows), workflowURL(g, op))
	}
	if f.detach {
		resume := fmt.Sprintf("fleetflow provision --resume %s --creds-out %s", op, f.credsOut)
		fmt.Fprintf(os.Stderr, "the new devices' credentials wait in %s; write the credentials file (once the workflow has\n"+
			"created the devices) with:\n  %s\n", pending, resume)
		return f.out.print(os.Stdout, provisionStarted{operationStarted: operationStarted{ID: op,
			Summary: fmt.Sprintf("provision %s rows from %s", numfmt.Thousands(rows), label), Total: rows,
			TemporalURL: workflowURL(g, op)}, PendingCredentials: pending, Resume: resume}, nil)
	}
	return awaitProvision(ctx, g, c, reg, f, run, op, pending, began)
}

// provisionStarted is what `provision --detach -o json|yaml` prints.
type provisionStarted struct {
	operationStarted
	PendingCredentials string `json:"pendingCredentials"`
	Resume             string `json:"resume"` // the command that waits for the run and writes the credentials file
}

// awaitProvision follows a started (or resumed) provisioning workflow to its end, writes the credentials
// file as soon as every batch has committed, and prints the summary.
func awaitProvision(ctx context.Context, g *globals, c client.Client, reg *registry.Registry, f *provisionFlags,
	run client.WorkflowRun, op, pending string, began time.Time) error {
	crashAt("mid-wait")
	var stopBar func()
	if f.wait {
		stopBar = showProgress(ctx, c, op)
	}
	// The credentials are final as soon as every batch has committed; write them then, not at the end, so that
	// devices (or the simulator) can use them while the workflow awaits their connection.
	credsDone := make(chan credsOutcome, 1)
	ended := make(chan struct{}) // the workflow has ended: no need to wait for the next poll
	go func() {
		credsDone <- finalizeWhenProvisioned(ctx, c, reg, op, pending, f.credsOut, g.cfg.TaskQueue, ended)
	}()
	var res workflows.ProvisionResult
	runErr := run.Get(ctx, &res)
	close(ended)
	slog.Debug("workflow ended", "op", op, "elapsed", time.Since(began), "err", runErr)
	if stopBar != nil {
		stopBar()
	}
	co := <-credsDone
	if co.interrupted {
		return &interruptedError{fmt.Sprintf("interrupted: workflow %s goes on; the new devices' credentials stay in %s until you run\n"+
			"  fleetflow provision --resume %s --creds-out %s", op, pending, op, f.credsOut)}
	}
	if co.err != nil {
		// Nothing is lost: the pending file keeps every secret until a --resume writes the file.
		co.err = fmt.Errorf("%w\nthe new devices' credentials stay in %s; once the cause is fixed, write the credentials file with\n"+
			"  fleetflow provision --resume %s --creds-out %s", co.err, pending, op, f.credsOut)
	}
	if runErr != nil {
		if co.err == nil && co.kept > 0 {
			fmt.Fprintf(os.Stderr, "credentials of the %d devices created before the failure: %s\n", co.kept, f.credsOut)
		}
		if co.err != nil {
			fmt.Fprintln(os.Stderr, co.err)
		}
		return fmt.Errorf("workflow %s failed: %w", op, runErr)
	}
	if co.err != nil {
		return co.err
	}
	kept := co.kept
	return printProvisionSummary(ctx, g, reg, f, res, kept, time.Since(began))
}

// openBackends opens the registry and the Temporal client a provisioning run needs.
func openBackends(ctx context.Context, g *globals) (*registry.Registry, client.Client, error) {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	c, err := dialTemporal(g)
	if err != nil {
		reg.Close()
		return nil, nil, err
	}
	return reg, c, nil
}

// resumeProvision picks up a provisioning run whose CLI was interrupted: the workflow went on, and the new
// devices' secrets wait in the pending credentials file until every batch has committed.
func resumeProvision(ctx context.Context, g *globals, f *provisionFlags) error {
	op := f.resume
	if f.credsOut == "" {
		f.credsOut = op + ".creds.ndjson"
	}
	pending := f.credsOut + ".pending"
	if _, err := os.Stat(pending); err != nil {
		if _, err := os.Stat(f.credsOut); err == nil {
			return fmt.Errorf("nothing to resume: the credentials of %s were written to %s already", op, f.credsOut)
		}
		return usagef("no pending credentials at %s: pass the --creds-out of the interrupted run", pending)
	}
	if f.validity != "" {
		// The run's batches set the expiry it was started with; nothing is left to do after it.
		fmt.Fprintln(os.Stderr, "note: --credential-validity is ignored with --resume: the workflow sets the expiry it was started with")
	}
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	if _, err := c.DescribeWorkflow(ctx, op, ""); err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			// Killed between staging and the start: no device was created, and nothing would ever end the wait.
			return fmt.Errorf("workflow %s never started, so none of its devices was created: the secrets in %s belong to no device; "+
				"remove it and provision again", op, pending)
		}
		return fmt.Errorf("workflow %s: %w (the credentials stay in %s)", op, err, pending)
	}
	return awaitProvision(ctx, g, c, reg, f, c.GetWorkflow(ctx, op, ""), op, pending, time.Now())
}

func durationOrNo(d time.Duration) string {
	if d <= 0 {
		return "no"
	}
	return d.String()
}

// credentialMaker generates a new device's credential: what goes to the credentials file, and the secret's
// digest or the certificate's fingerprint and end (nil for a secret) that go to the registry.
type credentialMaker func(id string) (c creds.Credential, digest, fingerprint []byte, notAfter *time.Time, err error)

func newSecretCredential(id string) (creds.Credential, []byte, []byte, *time.Time, error) {
	secret, err := creds.NewSecret()
	if err != nil {
		return creds.Credential{}, nil, nil, nil, err
	}
	return creds.Credential{ID: id, Secret: secret}, creds.Digest(secret), nil, nil, nil
}

// certificateMaker loads the fleet CA and returns a maker of device certificates signed by it, with their
// validity: --credential-validity or pki.DeviceCertValidity, cut to what is left of the CA's
// (docs/architecture.md, "Device certificates").
func certificateMaker(caDir, validityFlag string) (credentialMaker, time.Duration, error) {
	dir, err := deviceCADir(caDir)
	if err != nil {
		return nil, 0, err
	}
	files := pki.DeviceCAIn(dir)
	if !files.Exists() {
		return nil, 0, fmt.Errorf("no fleet CA in %s: create one with `fleetflow ca init` (or pass --ca-dir)", dir)
	}
	ca, err := pki.LoadCA(files.Cert, files.Key)
	if err != nil {
		return nil, 0, err
	}
	now := time.Now()
	validity := pki.DeviceCertValidity
	if validityFlag != "" {
		if validity, err = numfmt.ParseDuration("--credential-validity", validityFlag); err != nil {
			return nil, 0, usagef("%w", err)
		}
	}
	if left := ca.Cert.NotAfter.Sub(now); left < validity {
		if left < 24*time.Hour {
			return nil, 0, fmt.Errorf("the fleet CA in %s expires %s: it can sign no device certificate", dir, ca.Cert.NotAfter.Format(time.RFC3339))
		}
		fmt.Fprintf(os.Stderr, "note: the certificates end with the fleet CA, on %s\n", ca.Cert.NotAfter.Format("2006-01-02"))
		validity = left
	}
	return func(id string) (creds.Credential, []byte, []byte, *time.Time, error) {
		dc, err := ca.IssueDevice(id, now, validity)
		if err != nil {
			return creds.Credential{}, nil, nil, nil, err
		}
		return creds.Credential{ID: id, Cert: string(dc.CertPEM), Key: string(dc.KeyPEM)}, nil, dc.Fingerprint, &dc.NotAfter, nil
	}, validity, nil
}

// stageManifest copies the manifest into the registry, generating each parsed row's credential here: the
// secret (or certificate and private key) goes to the pending credentials file, its digest (or fingerprint)
// to Postgres, and nothing to Temporal. It stages records of batch rows (the workflow's batch size; 0 for the
// default), so that each batch reads exactly one record, in transactions of a whole number of records.
func stageManifest(ctx context.Context, reg *registry.Registry, op string, src manifest.Reader, pending string,
	makeCred credentialMaker, workers int, batch int64, committed func(rows int64, done bool) error) (int64, error) {
	var seq int64
	var werr error
	// A credential for every parsed row; rows the registry then finds invalid are dropped from the
	// credentials file at the end.
	// The scheme in force, read once: a row whose tags violate it is invalid like a row that does not parse,
	// so it never gets a credential (docs/architecture.md, "Metadata scheme").
	sch, err := reg.ActiveScheme(ctx)
	if err != nil {
		return 0, err
	}
	if sch != nil {
		manifest.TypeColumns(src, func(col string) manifest.CellKind { return cellKind(sch, col) })
	}
	ahead := &credentialsAhead{src: src, make: makeCred, workers: max(workers, 1), scheme: sch}
	w, err := creds.Create(pending)
	if err != nil {
		return 0, err
	}
	if batch <= 0 {
		batch = workflows.DefaultBatchSize
	}
	record := int(min(batch, int64(stagingChunk)))
	chunk := stagingChunk / record * record
	n, err := reg.StageChunks(ctx, op, "provision", chunk, func() (registry.StagedRow, bool, error) {
		m, err := ahead.next()
		if err == io.EOF {
			return registry.StagedRow{}, false, nil
		}
		if err != nil {
			return registry.StagedRow{}, false, err
		}
		row := m.row
		s := registry.StagedRow{Seq: seq, Line: row.Line, ID: row.ID, Tags: string(row.Tags), ParseError: row.Err, Checked: true}
		seq++
		if s.Tags == "" {
			s.Tags = "{}"
		}
		if s.ParseError == "" {
			m.cred.Line = row.Line
			s.SecretHash, s.CertFingerprint, s.CertNotAfter = m.digest, m.fingerprint, m.notAfter
			if werr = w.Write(m.cred); werr != nil {
				return s, false, werr
			}
		}
		return s, true, nil
	}, registry.StageHooks{
		// A committed chunk's rows may become devices at once: their secrets are on disk first.
		Record:       record,
		BeforeCommit: w.Sync,
		Committed:    committed,
	})
	if cerr := w.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return n, err
}

// stagingChunk is how many manifest rows each of the staging's transactions commits: two batches of the
// default size, so that the workflow starts within a tenth of a second of a million-row manifest's staging
// and never waits long for the next chunk, with few commits (each syncs the pending credentials file).
// A variable for tests only.
var stagingChunk = 2 * workflows.DefaultBatchSize

// credentialsChunk is how many manifest rows credentialsAhead reads and equips at a time.
const credentialsChunk = 1024

// equipped is a manifest row with the credential made for it (none for a row that did not parse).
type equipped struct {
	row                 manifest.Row
	cred                creds.Credential
	digest, fingerprint []byte
	notAfter            *time.Time // the certificate's end, recorded with its fingerprint
}

// credentialsAhead reads a manifest in chunks and makes each chunk's credentials on several goroutines, then
// hands the rows out in manifest order: a key and a signed certificate cost about 0.1 ms of CPU, which on
// one core would dominate the staging of a large manifest. With one worker it makes them inline.
type credentialsAhead struct {
	src     manifest.Reader
	make    credentialMaker
	workers int
	// scheme, when set, is the metadata scheme every row's tags must satisfy; memos are its verdicts
	// remembered per worker (rows repeat the same few tag documents).
	scheme *scheme.Scheme
	memos  []*scheme.Memo
	buf    []equipped
	i      int
	eof    bool
}

func (a *credentialsAhead) next() (equipped, error) {
	if a.i == len(a.buf) {
		if a.eof {
			return equipped{}, io.EOF
		}
		if err := a.fill(); err != nil {
			return equipped{}, err
		}
		if len(a.buf) == 0 {
			return equipped{}, io.EOF
		}
	}
	a.i++
	return a.buf[a.i-1], nil
}

func (a *credentialsAhead) fill() error {
	a.buf, a.i = a.buf[:0], 0
	for len(a.buf) < credentialsChunk {
		row, err := a.src.Next()
		if err == io.EOF {
			a.eof = true
			break
		}
		if err != nil {
			return err
		}
		a.buf = append(a.buf, equipped{row: row})
	}
	if a.scheme != nil && a.memos == nil {
		a.memos = make([]*scheme.Memo, a.workers)
		for i := range a.memos {
			a.memos[i] = a.scheme.NewMemo(schemeMemoSize)
		}
	}
	equip := func(first, step int) error {
		for i := first; i < len(a.buf); i += step {
			e := &a.buf[i]
			if e.row.Err == "" {
				// A row that cannot become a device gets no credential, so none of its kind can reach
				// the credentials file; the registry reports it by line like any invalid row.
				tags := string(e.row.Tags)
				if tags == "" {
					tags = "{}" // as staged
				}
				if e.row.Plain {
					e.row.Err = registry.IDProblem(e.row.ID) // its tags are valid by construction
				} else {
					e.row.Err = registry.RowProblem(e.row.ID, tags)
				}
				if e.row.Err == "" && a.scheme != nil {
					e.row.Err = schemeProblem(a.memos[first], tags)
				}
			}
			if e.row.Err != "" {
				continue
			}
			var err error
			if e.cred, e.digest, e.fingerprint, e.notAfter, err = a.make(e.row.ID); err != nil {
				return err
			}
		}
		return nil
	}
	if a.workers == 1 {
		return equip(0, 1)
	}
	errs := make([]error, a.workers)
	var wg sync.WaitGroup
	for w := range a.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = equip(w, a.workers)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

type credsOutcome struct {
	kept        int
	err         error
	interrupted bool // the CLI was interrupted while the workflow still runs: nothing was written
}

// finalizeWhenProvisioned waits until the workflow has left its provisioning phase (or ended), then
// finalizes the credentials file.
func finalizeWhenProvisioned(ctx context.Context, c client.Client, reg *registry.Registry, op, pending, out, taskQueue string,
	ended <-chan struct{}) credsOutcome {
	lastAnswer, hinted := time.Now(), false
	for ctx.Err() == nil {
		desc, err := c.DescribeWorkflow(ctx, op, "")
		if err == nil && desc.Status != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			break
		}
		// A query needs a worker; without one it would wait forever, so bound it and say what is missing.
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := c.QueryWorkflow(qctx, op, "", workflows.QueryProgress)
		cancel()
		if err == nil {
			lastAnswer = time.Now()
			var p workflows.ProvisionProgress
			if v.Get(&p) == nil && p.Phase != "provisioning" {
				break
			}
		} else if !hinted && ctx.Err() == nil && time.Since(lastAnswer) > 10*time.Second {
			hinted = true
			fmt.Fprintf(os.Stderr, "no worker answers on task queue %q yet; start one (`make up`, `fleetflow dev up` or bin/fleetflow-worker)\n", taskQueue)
		}
		select {
		case <-ctx.Done():
		case <-ended:
			ended = nil // one look at once; then the usual pace
		case <-time.After(300 * time.Millisecond):
		}
	}
	if ctx.Err() != nil {
		// Interrupted: finalizing now would drop the secrets of devices the workflow has yet to create.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		desc, err := c.DescribeWorkflow(cctx, op, "")
		cancel()
		if err != nil || desc.Status == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			return credsOutcome{interrupted: true}
		}
	}
	began := time.Now()
	kept, err := finalizeCreds(context.WithoutCancel(ctx), reg, op, pending, out)
	slog.Debug("credentials finalized", "op", op, "kept", kept, "took", time.Since(began))
	if err == nil {
		fmt.Fprintf(os.Stderr, "credentials of %d new devices written to %s\n", kept, out)
	}
	return credsOutcome{kept: kept, err: err}
}

// finalizeCreds keeps, from the pending credentials, exactly the rows that created a device: rows that were
// invalid or whose device already existed would carry a secret the registry does not know. When every row
// created a device (the common case) the pending file already is the result and is published as it is.
// The file is synced and linked into place (creds.Publish): never half-written, never over an existing file.
func finalizeCreds(ctx context.Context, reg *registry.Registry, op, pending, out string) (int, error) {
	counts, err := reg.ProvisionCounts(ctx, op)
	if err != nil {
		return 0, err
	}
	staged, err := reg.OperationRows(ctx, op)
	if err != nil {
		return 0, err
	}
	if counts.Created == staged && counts.Total() == staged {
		if err := publishCreds(pending, pending, out); err != nil {
			return 0, err
		}
		return int(counts.Created), nil
	}
	issues, err := reg.ProvisionResults(ctx, op, "", 1<<31-1)
	if err != nil {
		return 0, err
	}
	drop := make(map[int64]bool, len(issues))
	for _, is := range issues {
		drop[is.Line] = true
	}
	// After a failed run some batches never committed: only devices the operation did create count.
	created, err := reg.CreatedBy(ctx, op)
	if err != nil {
		return 0, err
	}
	// Loosely: a line that names no device (an older CLI wrote secrets for rows with an empty id) cannot
	// have created one, and must not keep the others' secrets from the operator.
	all, _, err := creds.ReadLoose(pending)
	if err != nil {
		return 0, err
	}
	tmpf, err := os.CreateTemp(filepath.Dir(out), filepath.Base(out)+".*.tmp")
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", out, err)
	}
	tmp := tmpf.Name()
	tmpf.Close()
	os.Remove(tmp) // creds.Create makes it again, exclusively and with mode 0600
	w, err := creds.Create(tmp)
	if err != nil {
		return 0, err
	}
	for _, c := range all {
		if drop[c.Line] || !created[c.ID] {
			continue
		}
		if err := w.Write(c); err != nil {
			w.Close()
			os.Remove(tmp)
			return 0, err
		}
	}
	if err := w.Close(); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := publishCreds(tmp, pending, out); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := os.Remove(pending); err != nil && !errors.Is(err, os.ErrNotExist) {
		return w.Count(), fmt.Errorf("remove %s: %w", pending, err)
	}
	return w.Count(), nil
}

// publishCreds links the finished credentials file src into place at out (creds.Publish). An out that already
// holds exactly src's credentials is the same run's file from an earlier attempt that stopped before it
// removed the pending file (a crash, a resumed run): then src and pending go and nothing is refused.
func publishCreds(src, pending, out string) error {
	err := creds.Publish(src, out)
	if err == nil || !errors.Is(err, creds.ErrExists) {
		return err
	}
	want, _, rerr := creds.ReadLoose(src)
	have, _, herr := creds.ReadLoose(out)
	if rerr != nil || herr != nil || !sameCredentials(want, have) {
		return err
	}
	for _, p := range []string{src, pending} {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, rerr)
		}
	}
	return nil
}

// sameCredentials reports whether a and b hold the same credentials, in any order.
func sameCredentials(a, b []creds.Credential) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(c creds.Credential) string { return c.ID + "\x00" + c.Secret + "\x00" + c.Cert }
	seen := make(map[string]int, len(a))
	for _, c := range a {
		seen[key(c)]++
	}
	for _, c := range b {
		if seen[key(c)] == 0 {
			return false
		}
		seen[key(c)]--
	}
	return true
}

// credsPathsFree refuses to start an operation whose credentials file, or its pending file, exists: either
// may hold the only copy of an earlier run's secrets (docs/architecture.md, "Where secrets live").
func credsPathsFree(out, command string) error {
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s exists: credentials files are never overwritten (it may hold the only copy of earlier devices' secrets); "+
			"move it away or pass another --creds-out", out)
	}
	if _, err := os.Lstat(out + ".pending"); err == nil {
		return fmt.Errorf("%s.pending exists: an earlier run's secrets wait there; write them with `fleetflow %s --resume <its workflow id> "+
			"--creds-out %s`, or pass another --creds-out", out, command, out)
	}
	return nil
}

// startFailed handles a workflow start that returned an error after the secrets were written to pending: the
// start may still have reached the server (a timeout), and then the workflow creates the devices whose only
// secrets are in pending. They are removed only when the server says there is no such workflow.
func startFailed(ctx context.Context, c client.Client, op, pending, resume string, startErr error) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := c.DescribeWorkflow(dctx, op, "")
	var nf *serviceerror.NotFound
	switch {
	case errors.As(err, &nf):
		// Never started: the secrets have no use. The staged rows stay until the health check drops them
		// as stale (fleet.StaleStagingAfter), as it does for a CLI killed right here.
		_ = os.Remove(pending)
		return fmt.Errorf("start workflow %s: %w", op, startErr)
	case err == nil:
		return fmt.Errorf("start workflow %s: %w\nit did start: its devices' credentials wait in %s; write them with\n  %s", op, startErr, pending, resume)
	}
	return fmt.Errorf("start workflow %s: %w\nwhether it started is unknown (%v): the credentials stay in %s; once Temporal answers, run\n  %s",
		op, startErr, err, pending, resume)
}

func printProvisionSummary(ctx context.Context, g *globals, reg *registry.Registry, f *provisionFlags, res workflows.ProvisionResult, kept int, took time.Duration) error {
	issues, err := reg.ProvisionResults(ctx, res.Op, "invalid", 50)
	if err != nil {
		return err
	}
	if f.out.structured() {
		sum := provisionSummary{WorkflowID: res.Op, Rows: res.Rows, Counts: res.Counts, Invalid: issues,
			CredentialsFile: f.credsOut, Credentials: kept, Seconds: took.Seconds(), Connect: res.Connect,
			TemporalURL: workflowURL(g, res.Op)}
		if err := f.out.print(os.Stdout, sum, nil); err != nil {
			return err
		}
		return provisionOutcome(res)
	}
	th := numfmt.Thousands
	fmt.Printf("Provisioned %s rows in %.1fs (%s)\n", th(res.Rows), took.Seconds(), res.Op)
	fmt.Printf("  created %s · already present %s · invalid %s\n", th(res.Counts.Created), th(res.Counts.Existing), th(res.Counts.Invalid))
	for _, is := range issues {
		id := is.ID
		if id == "" {
			id = "-"
		}
		fmt.Printf("    line %d (%s): %s\n", is.Line, id, is.Reason)
	}
	if res.Counts.Invalid > int64(len(issues)) {
		fmt.Printf("    … and %s more invalid rows\n", th(res.Counts.Invalid-int64(len(issues))))
	}
	if res.Counts.Existing > 0 {
		fmt.Printf("  %s devices already existed; their credentials are untouched\n", th(res.Counts.Existing))
	}
	fmt.Printf("  credentials of %s new devices: %s (mode 0600; shown once)\n", th(int64(kept)), f.credsOut)
	if res.Connect != nil {
		fmt.Printf("  connected %s · reported capabilities %s of %s new devices\n", th(res.Connect.Connected),
			th(res.Connect.Reported), th(res.Connect.Created))
		if len(res.Connect.Missing) > 0 {
			fmt.Printf("  not reported yet: %s\n", strings.Join(res.Connect.Missing, ", "))
		}
	}
	fmt.Printf("  Temporal UI: %s\n", workflowURL(g, res.Op))
	return provisionOutcome(res)
}

// provisionSummary is what `provision -o json|yaml` prints once the run has ended.
type provisionSummary struct {
	WorkflowID      string                 `json:"workflowId"`
	Rows            int64                  `json:"rows"`
	Counts          fleet.ProvisionCounts  `json:"counts"`
	Invalid         []fleet.RowResult      `json:"invalid"`
	CredentialsFile string                 `json:"credentialsFile"`
	Credentials     int                    `json:"credentials"`
	Seconds         float64                `json:"seconds"`
	Connect         *fleet.ConnectProgress `json:"connect"`
	TemporalURL     string                 `json:"temporalUrl"`
}

// provisionOutcome is the exit status of a finished run: invalid rows are invalid input (exit 2, the good
// rows are provisioned all the same); new devices that did not report within --await-connect are
// per-device failures (exit 3).
func provisionOutcome(res workflows.ProvisionResult) error {
	if n := res.Counts.Invalid; n > 0 {
		return usagef("%s: %s of %s manifest rows were invalid (see the summary); the others were provisioned",
			res.Op, numfmt.Thousands(n), numfmt.Thousands(res.Rows))
	}
	if c := res.Connect; c != nil && c.Reported < c.Created {
		return partialf("%s: %s of %s new devices did not report within --await-connect", res.Op,
			numfmt.Thousands(c.Created-c.Reported), numfmt.Thousands(c.Created))
	}
	return nil
}

// schemeMemoSize bounds the tag documents each staging worker remembers the scheme's verdict on.
const schemeMemoSize = 10_000

// schemeProblem says how a row's tags violate the scheme ("tags.floor: got string, want integer"; several
// violations joined with "; "), or "".
func schemeProblem(m *scheme.Memo, tags string) string {
	err := m.ValidateTags([]byte(tags))
	var se *scheme.Error
	if !errors.As(err, &se) {
		if err != nil {
			return err.Error()
		}
		return ""
	}
	vs := make([]string, len(se.Violations))
	for i, v := range se.Violations {
		vs[i] = v.String()
	}
	return strings.Join(vs, "; ")
}

// cellKind is the type a CSV column's cells take in the tags: the scheme's type for the tag the column
// names, when it declares a single scalar one (integer, number, or both; boolean), a string otherwise.
func cellKind(s *scheme.Scheme, column string) manifest.CellKind {
	types, _ := s.Lookup(scheme.Join("tags", column))
	switch {
	case len(types) == 1 && types[0] == "integer":
		return manifest.CellInteger
	case len(types) == 1 && types[0] == "number", len(types) == 2 && slices.Contains(types, "integer") && slices.Contains(types, "number"):
		return manifest.CellNumber
	case len(types) == 1 && types[0] == "boolean":
		return manifest.CellBoolean
	}
	return manifest.CellString
}
