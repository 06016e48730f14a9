package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// maxRetireIDs is how many device ids `fleetflow retire` takes on the command line. The ids travel in the
// Decommission workflow's input (workflows.JobInput: IDs, and Query as "ids: ..."), and Temporal refuses a
// payload over 2 MB with an error that does not say why; 10,000 ids of the longest form (64 characters) make
// about 1.3 MB of input. More devices are retired by query, whose input is the query alone
// (docs/architecture.md, "Data limits").
const maxRetireIDs = 10_000

func newRetireCmd(g *globals) *cobra.Command {
	var q, group, reason string
	var wipe, detach bool
	var timeout time.Duration
	var out *output
	cmd := &cobra.Command{
		Use:   "retire ID... | --query QUERY",
		Short: "Decommission devices: revoke at once, archive their twins, take them out of jobs and rollouts",
		Long: `Start a Decommission workflow over the given devices or the devices a twin query selects. Each device's
credentials stop working at once (the gateway refuses its next CONNECT and drops a live session), its twin
and timeline are archived, it leaves pending jobs and running rollouts, and it no longer appears in queries
unless they ask for status = 'retired'. With --wipe a factory reset is sent first (best effort). Retiring a
retired device is harmless; unknown ids are reported per device, the others are retired, and the exit code
is 2. At most 10,000 ids are taken on the command line; retire more devices with --query.`,
		Example: `  fleetflow retire dev-0001 dev-0002 --reason "hardware fault"
  fleetflow retire --query "SELECT * FROM devices WHERE tags.site = 'ber-1'" --wipe
  fleetflow retire --query "SELECT * FROM devices WHERE tags.batch = 'b7'" --detach -o json`,
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTargetArgs(args, q, group); err != nil {
				return err
			}
			if timeout <= 0 {
				return usagef("--wipe-timeout must be positive")
			}
			return startRetire(cmd.Context(), g, args, q, group, reason, wipe, timeout, detach, out)
		},
	}
	out = addOutputFlag(cmd)
	cmd.Flags().StringVar(&q, "query", "", "twin query selecting the devices to retire")
	_ = cmd.RegisterFlagCompletionFunc("query", completeQueryPaths(g))
	addGroupFlag(g, cmd, &group)
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded with every device")
	cmd.Flags().BoolVar(&wipe, "wipe", false, "send the factoryReset method to connected devices before revoking them")
	cmd.Flags().DurationVar(&timeout, "wipe-timeout", workflows.DefaultWipeTimeout, "how long a device has to answer the factory reset")
	cmd.Flags().BoolVar(&detach, "detach", false, "start and return without waiting")
	return cmd
}

func startRetire(ctx context.Context, g *globals, ids []string, q, group, reason string, wipe bool, timeout time.Duration, detach bool, out *output) error {
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	id := "decommission-" + time.Now().UTC().Format("20060102-150405.000")
	spec := []byte(fmt.Sprintf(`{"reason":%q,"wipe":%v}`, reason, wipe))
	// The job and its frozen target set are created by the workflow's first step (JobCreate), never here;
	// the CLI only checks, read-only, that a query compiles and selects something.
	in := workflows.JobInput{JobID: id, Kind: fleet.JobRetire, Spec: spec, Reason: reason, Wipe: wipe, Timeout: timeout}
	if q != "" || group != "" {
		var n int64
		if q, n, err = resolveTargets(ctx, reg, q, group); err != nil {
			return err
		}
		if n == 0 {
			return errEmptyRetire
		}
		in.Query = q
	} else {
		in.Query, in.IDs = "ids: "+strings.Join(ids, " "), ids
	}
	crashAt("before-start")
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: "Decommission: " + retireTargets(q, ids),
		StaticDetails: fmt.Sprintf("Reason: %s  \nWipe: %v", orDash(reason), wipe),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpDecommission),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.Decommission, in)
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	crashAt("after-start")
	total, err := awaitCreated(ctx, c, run, id, "decommission", detachLimit(detach), jobCreated)
	if err != nil {
		return startedButPending(ctx, err, out, operationStarted{ID: id, Summary: "retire devices", TemporalURL: workflowURL(g, id)},
			"decommission", "fleetflow job status "+id)
	}
	what := "retire " + numfmt.Thousands(total) + " devices"
	started := operationStarted{ID: id, Summary: what, Total: total, TemporalURL: workflowURL(g, id)}
	fmt.Fprintf(hintWriter(out), "%s started: %s\nwatch it: %s\n", id, what, started.TemporalURL)
	if detach {
		return out.print(os.Stdout, started, nil)
	}
	crashAt("mid-wait")
	res, waited, err := awaitJob(ctx, c, run, id, "decommission")
	if !waited || err != nil {
		return err
	}
	devs, err := reg.JobDevices(ctx, id, nil, 100000)
	if err != nil {
		return err
	}
	r := retireResult{ID: id, State: res.State, Unknown: []string{}, Failed: []registry.JobDevice{}}
	for _, d := range devs {
		switch {
		case d.State == fleet.JobFailed && d.Error == "no such device":
			r.Unknown = append(r.Unknown, d.DeviceID)
		case d.State == fleet.JobSucceeded && d.Error == "already retired":
			r.AlreadyRetired++
		case d.State == fleet.JobSucceeded:
			r.Retired++
		default:
			r.Failed = append(r.Failed, d)
		}
	}
	if err := out.print(os.Stdout, r, func() error {
		fmt.Printf("%s: %d retired, %d already retired, %d unknown\n", r.State, r.Retired, r.AlreadyRetired, len(r.Unknown))
		if len(r.Unknown) > 0 {
			fmt.Printf("unknown devices: %s\n", strings.Join(r.Unknown[:min(len(r.Unknown), 20)], ", "))
		}
		for _, d := range r.Failed[:min(len(r.Failed), 20)] {
			fmt.Printf("not retired: %s (%s: %s)\n", d.DeviceID, d.State, d.Error)
		}
		return nil
	}); err != nil {
		return err
	}
	switch {
	case len(r.Unknown) > 0:
		// Invalid input, like a manifest's invalid rows: the known devices are retired all the same.
		return usagef("%d of the given devices do not exist", len(r.Unknown))
	case len(r.Failed) > 0:
		return partialf("%s: %d devices were not retired", id, len(r.Failed))
	}
	return nil
}

// retireTargets says what a decommission targets, for the Temporal UI.
func retireTargets(q string, ids []string) string {
	if q != "" {
		return "the devices of `" + q + "`"
	}
	return numfmt.Thousands(int64(len(ids))) + " devices by id"
}

// errEmptyRetire is the answer to a retire query that selects nothing.
var errEmptyRetire = errors.New("the query selects no devices (retired ones are left out); nothing to retire")

// retireResult is what `retire -o json|yaml` prints once the decommission has ended.
type retireResult struct {
	ID             string               `json:"id"`
	State          string               `json:"state"`
	Retired        int                  `json:"retired"`
	AlreadyRetired int                  `json:"alreadyRetired"`
	Unknown        []string             `json:"unknown"`
	Failed         []registry.JobDevice `json:"failed"`
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// devicesLifecycleCmds are the devices subcommands of the retire stage.
func devicesLifecycleCmds(g *globals) []*cobra.Command {
	var reason string
	mk := func(enable bool) *cobra.Command {
		name, short := "disable", "Quarantine a device: its session is dropped at once and it cannot connect until enabled"
		long := `Quarantine a device: the gateway drops its session at once and refuses it until it is enabled again. Its
twin and credentials stay; jobs and rollouts skip it. The reason is recorded on its timeline.`
		if enable {
			name, short = "enable", "Let a disabled device connect again"
			long = `Let a disabled device connect again with its credentials. A retired device cannot be enabled.`
		}
		var out *output
		c := &cobra.Command{
			Use: name + " ID", Short: short, Long: long, Args: cobra.ExactArgs(1),
			Example:           fmt.Sprintf("  fleetflow devices %s sensor-0042 --reason \"suspicious traffic\"", name),
			ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
			RunE: func(cmd *cobra.Command, args []string) error {
				reg, err := openRegistry(cmd, g)
				if err != nil {
					return err
				}
				defer reg.Close()
				changed, err := reg.SetEnabled(cmd.Context(), args[0], enable, reason)
				if errors.Is(err, fleet.ErrNotFound) {
					return fmt.Errorf("no device %q in the registry", args[0])
				}
				if err != nil {
					return err
				}
				doc := struct {
					DeviceID string `json:"deviceId"`
					Enabled  bool   `json:"enabled"`
					Changed  bool   `json:"changed"`
				}{args[0], enable, changed}
				return out.print(stdout(cmd), doc, func() error {
					switch {
					case !changed:
						fmt.Printf("%s is already %sd\n", args[0], name)
					case enable:
						fmt.Printf("%s enabled: it may connect again\n", args[0])
					default:
						fmt.Printf("%s disabled: the gateway drops its session now and refuses it until `fleetflow devices enable %s`\n", args[0], args[0])
					}
					return nil
				})
			},
		}
		c.Flags().StringVar(&reason, "reason", "", "why, recorded on the device's timeline")
		out = addOutputFlag(c)
		return c
	}
	return []*cobra.Command{mk(false), mk(true)}
}

func newReplaceCmd(g *globals) *cobra.Command {
	var credsOut, auth, caDir, resume string
	var detach bool
	var out *output
	cmd := &cobra.Command{
		Use:   "replace OLD NEW",
		Short: "Let device NEW take over OLD's role: provision NEW if needed, copy tags and desired, retire OLD",
		Long: `Start a ReplaceDevice workflow. If NEW does not exist it is provisioned: its secret is generated here and
written to --creds-out (mode 0600), never sent anywhere else. With --auth x509 (the default when OLD
authenticates with a certificate only) NEW gets a private key and a client certificate from the fleet CA
(--ca-dir) instead, written the same way; the registry keeps the certificate's fingerprint. NEW gets OLD's tags (NEW's own tags win) and
desired properties, both twins record the lineage, and OLD is retired (credentials revoked at once).
With --detach the command returns once the workflow has started; NEW's credentials file is written at once
and works as soon as the workflow has created NEW.

--creds-out must not exist: a credentials file is never overwritten. When the command is interrupted, or the
workflow fails after creating NEW, NEW's secret is kept (in <creds-out>.pending until the workflow ends, then
in --creds-out); "replace --resume <workflow id> --creds-out FILE" waits for the workflow and writes it.`,
		Example: `  fleetflow replace sensor-0042 sensor-0042b
  fleetflow replace sensor-0042 sensor-0042b --creds-out /secure/sensor-0042b.creds.ndjson --detach
  fleetflow replace --resume replace-sensor-0042-20261206-081500 --creds-out sensor-0042b.creds.ndjson`,
		Args: func(cmd *cobra.Command, args []string) error {
			if resume != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(2)(cmd, args)
		},
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if auth != "" && auth != authSecret && auth != authX509 {
				return usagef("--auth %q: want secret or x509", auth)
			}
			if resume != "" {
				if detach {
					return usagef("--detach and --resume contradict each other: --resume waits for the workflow")
				}
				if credsOut == "" {
					return usagef("--resume needs the --creds-out of the interrupted run")
				}
				return resumeReplace(cmd.Context(), g, resume, credsOut, out)
			}
			return replace(cmd.Context(), g, args[0], args[1], credsOut, detach, out, newCredentials{auth: auth, caDir: caDir})
		},
	}
	cmd.Flags().StringVar(&resume, "resume", "", "wait for an interrupted replacement (its workflow id) and write NEW's credentials file")
	cmd.Flags().StringVar(&auth, "auth", "", "how NEW authenticates if it is provisioned: secret or x509 (default: as OLD does)")
	addCADirFlag(cmd, &caDir)
	cmd.Flags().StringVar(&credsOut, "creds-out", "", "where NEW's credentials go if it is provisioned (default NEW.creds.ndjson)")
	cmd.Flags().BoolVar(&detach, "detach", false, "start the replacement and return without waiting for it")
	out = addOutputFlag(cmd)
	return cmd
}

// newCredentials says how replace provisions NEW: auth "" means as OLD authenticates.
type newCredentials struct{ auth, caDir string }

func replace(ctx context.Context, g *globals, old, nw, credsOut string, detach bool, out *output, nc newCredentials) error {
	if err := twin.ValidateID(nw); err != nil {
		return usagef("NEW: %w", err)
	}
	if old == nw {
		return usagef("a device cannot replace itself")
	}
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	o, err := reg.GetDevice(ctx, old)
	if errors.Is(err, fleet.ErrNotFound) {
		return fmt.Errorf("no device %q in the registry", old)
	}
	if err != nil {
		return err
	}
	if o.Status == fleet.StatusRetired {
		return fmt.Errorf("%s is already retired; nothing to replace", old)
	}
	op := fmt.Sprintf("replace-%s-%s", old, time.Now().UTC().Format("20060102-150405"))
	in := workflows.ReplaceInput{Op: op, Old: old, New: nw}
	n, err := reg.GetDevice(ctx, nw)
	var pending string
	var cred creds.Credential
	switch {
	case err == nil && n.Status == fleet.StatusRetired:
		at := n.UpdatedAt
		if n.RetiredAt != nil {
			at = *n.RetiredAt
		}
		return fmt.Errorf("%s cannot take over another device's role: %s; or give a new device id", nw, registry.RetiredIDReason(at))
	case err == nil:
		// An existing device (e.g. provisioned in advance) takes over; its credentials stay as they are.
	case errors.Is(err, fleet.ErrNotFound):
		in.Provision = true
		if credsOut == "" {
			credsOut = nw + ".creds.ndjson"
		}
		if err := credsPathsFree(credsOut, "replace"); err != nil {
			return err
		}
		auth := nc.auth
		if auth == "" {
			// A certificate fleet stays one: NEW authenticates as OLD did.
			auth = authSecret
			if (o.CertFingerprint != "" || o.Cert2Fingerprint != "") && !o.HasSecret1 && !o.HasSecret2 {
				auth = authX509
			}
		}
		makeCred := newSecretCredential
		if auth == authX509 {
			if makeCred, in.CredentialValidity, err = certificateMaker(nc.caDir, ""); err != nil {
				return err
			}
		}
		var digest, fingerprint []byte
		var notAfter *time.Time
		if cred, digest, fingerprint, notAfter, err = makeCred(nw); err != nil {
			return err
		}
		pending = credsOut + ".pending"
		w, err := creds.Create(pending)
		if err != nil {
			return err
		}
		if err := w.Write(cred); err != nil {
			w.Close()
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		done := false
		if _, err := reg.StageRows(ctx, op, "replace", func() (registry.StagedRow, bool, error) {
			if done {
				return registry.StagedRow{}, false, nil
			}
			done = true
			return registry.StagedRow{Seq: 0, Line: 1, ID: nw, Tags: "{}", SecretHash: digest, CertFingerprint: fingerprint, CertNotAfter: notAfter}, true, nil
		}); err != nil {
			_ = os.Remove(pending)
			return fmt.Errorf("stage %s: %w", nw, err)
		}
	default:
		return err
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: op, TaskQueue: g.cfg.TaskQueue, WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: fmt.Sprintf("Replace %s with %s", old, nw),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet("replace"),
			searchattr.State.ValueSet(searchattr.StateRunning), searchattr.Total.ValueSet(1)),
	}, workflows.ReplaceDevice, in)
	if err != nil {
		// The staged row stays for the health check to drop once it is stale (fleet.StaleStagingAfter): if
		// the start did reach the server, its workflow reads it; if not, nothing does.
		if pending != "" {
			return startFailed(ctx, c, op, pending, fmt.Sprintf("fleetflow replace --resume %s --creds-out %s", op, credsOut), err)
		}
		return fmt.Errorf("start %s: %w", op, err)
	}
	started := operationStarted{ID: op, Summary: fmt.Sprintf("replace %s with %s", old, nw), Total: 1, TemporalURL: workflowURL(g, op)}
	hints := hintWriter(out)
	fmt.Fprintf(hints, "%s started\nwatch it: %s\n", op, started.TemporalURL)
	if detach {
		if pending != "" {
			// The one secret is final already: nothing but the workflow's creation of NEW is missing.
			if err := creds.Publish(pending, credsOut); err != nil {
				return fmt.Errorf("credentials of %s stay in %s: %w", nw, pending, err)
			}
			fmt.Fprintf(hints, "%s's credentials are in %s (shown once); they work once the workflow has created it\n", nw, credsOut)
		}
		return out.print(os.Stdout, started, nil)
	}
	return awaitReplace(ctx, g, reg, run, op, old, nw, pending, credsOut, out)
}

// resumeReplace picks up a replacement whose CLI was interrupted: it waits for the workflow, then writes NEW's
// credentials file from the pending one if the workflow created NEW.
func resumeReplace(ctx context.Context, g *globals, op, credsOut string, out *output) error {
	pending := credsOut + ".pending"
	if _, err := os.Stat(pending); err != nil {
		if _, err := os.Stat(credsOut); err == nil {
			return fmt.Errorf("nothing to resume: the credentials of %s were written to %s already", op, credsOut)
		}
		return usagef("no pending credentials at %s: pass the --creds-out of the interrupted run", pending)
	}
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	if _, err := c.DescribeWorkflow(ctx, op, ""); err != nil {
		return fmt.Errorf("replacement %s: %w (its credentials stay in %s)", op, err, pending)
	}
	cs, _, err := creds.ReadLoose(pending)
	if err != nil {
		return err
	}
	if len(cs) != 1 {
		return fmt.Errorf("%s holds %d credentials; a replacement's holds one", pending, len(cs))
	}
	return awaitReplace(ctx, g, reg, c.GetWorkflow(ctx, op, ""), op, "", cs[0].ID, pending, credsOut, out)
}

// awaitReplace waits for a replacement's workflow and, when it provisioned NEW, moves NEW's secret from
// pending to credsOut. Every way out keeps the secret of a NEW that exists: interrupted, it stays in pending
// for --resume; failed after creating NEW, it is written to credsOut all the same; only a NEW that was never
// created loses its unused secret. old is "" on --resume (the summary then names NEW only).
func awaitReplace(ctx context.Context, g *globals, reg *registry.Registry, run client.WorkflowRun, op, old, nw, pending, credsOut string,
	out *output) error {
	var res workflows.ReplaceResult
	runErr := run.Get(ctx, &res)
	if runErr != nil && ctx.Err() != nil {
		msg := fmt.Sprintf("stopped waiting; %s goes on (see it in the Temporal UI: %s)", op, workflowURL(g, op))
		if pending != "" {
			msg += fmt.Sprintf("\n%s's credentials stay in %s until you run\n  fleetflow replace --resume %s --creds-out %s", nw, pending, op, credsOut)
		}
		return &interruptedError{msg}
	}
	if old == "" {
		old = res.Old
	}
	provisioned := false
	if pending != "" {
		fctx := context.WithoutCancel(ctx)
		created, err := reg.CreatedBy(fctx, op)
		if err != nil {
			return fmt.Errorf("did %s create %s? %w (its credentials stay in %s; run `fleetflow replace --resume %s --creds-out %s`)",
				op, nw, err, pending, op, credsOut)
		}
		switch {
		case created[nw]:
			if err := publishCreds(pending, pending, credsOut); err != nil {
				return fmt.Errorf("credentials of %s stay in %s: %w", nw, pending, err)
			}
			provisioned = true
			if runErr != nil {
				fmt.Fprintf(os.Stderr, "%s was created before the failure; its credentials are in %s (shown once)\n", nw, credsOut)
			}
		default:
			// The workflow ended without creating NEW (it failed first, or NEW appeared meanwhile and took
			// over with its own credentials): this secret was never registered anywhere.
			_ = os.Remove(pending)
		}
	}
	if runErr != nil {
		if old == "" {
			return fmt.Errorf("replacement %s: %w", op, runErr)
		}
		return fmt.Errorf("replace %s with %s: %w", old, nw, runErr)
	}
	r := replaceResult{ID: op, Old: old, New: nw, DesiredVersion: res.DesiredVersion}
	if provisioned {
		r.Provisioned, r.CredentialsFile = true, credsOut
	}
	return out.print(os.Stdout, r, func() error {
		if r.Provisioned {
			fmt.Printf("%s provisioned; its credentials are in %s (shown once)\n", nw, credsOut)
		}
		fmt.Printf("%s replaced %s: tags and desired copied (desired version %d), %s retired\n", nw, old, res.DesiredVersion, old)
		return nil
	})
}

// replaceResult is what `replace -o json|yaml` prints once the replacement has ended.
type replaceResult struct {
	ID              string `json:"id"`
	Old             string `json:"old"`
	New             string `json:"new"`
	Provisioned     bool   `json:"provisioned"`
	CredentialsFile string `json:"credentialsFile,omitempty"`
	DesiredVersion  int64  `json:"desiredVersion"`
}

func newPurgeCmd(g *globals) *cobra.Command {
	var older, every string
	var detach bool
	var out *output
	cmd := &cobra.Command{
		Use:   "purge --older-than 90d [--every 24h]",
		Short: "Delete retired devices past retention (rows, archive, events); --every schedules it",
		Long: `Delete the devices retired longer ago than --older-than: their rows, archived twins and timeline events, in
a PurgeArchive workflow. With --every the purge runs on a Temporal Schedule (created, or updated when it
exists) instead of now.`,
		Example: `  fleetflow purge --older-than 90d
  fleetflow purge --older-than 90d --every 1d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			retention, err := numfmt.ParseDuration("--older-than", older)
			if err != nil {
				return usagef("%w (e.g. 90d)", err)
			}
			c, err := dialTemporal(g)
			if err != nil {
				return err
			}
			defer c.Close()
			in := workflows.PurgeInput{OlderThan: retention}
			if every != "" {
				d, err := numfmt.ParseDuration("--every", every)
				if err != nil || d < time.Minute {
					return usagef("--every %q: want a duration of at least 1m, like 24h or 1d", every)
				}
				return schedulePurge(cmd.Context(), g, c, d, in)
			}
			id := "purge-" + time.Now().UTC().Format("20060102-150405")
			run, err := c.ExecuteWorkflow(cmd.Context(), client.StartWorkflowOptions{ID: id, TaskQueue: g.cfg.TaskQueue,
				WorkflowExecutionErrorWhenAlreadyStarted: true,
				StaticSummary:                            "Purge retired devices older than " + older,
				TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet("purge"),
					searchattr.State.ValueSet(searchattr.StateRunning))}, workflows.PurgeArchive, in)
			if err != nil {
				return fmt.Errorf("start %s: %w", id, err)
			}
			if detach {
				started := operationStarted{ID: id, Summary: "purge retired devices older than " + older, TemporalURL: workflowURL(g, id)}
				return out.print(os.Stdout, started, func() error {
					fmt.Printf("%s started\nwatch it: %s\n", id, started.TemporalURL)
					return nil
				})
			}
			var res workflows.PurgeResult
			if err := run.Get(cmd.Context(), &res); err != nil {
				if cmd.Context().Err() != nil {
					return &interruptedError{fmt.Sprintf("stopped waiting; %s goes on (see it in the Temporal UI: %s)", id, workflowURL(g, id))}
				}
				return fmt.Errorf("%s: %w", id, err)
			}
			return out.print(os.Stdout, res, func() error {
				fmt.Printf("purged %s retired devices older than %s\n", numfmt.Thousands(res.Purged), older)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&older, "older-than", "", "retention: devices retired longer ago than this go (e.g. 90d, 720h)")
	cmd.Flags().StringVar(&every, "every", "", "run on a Temporal Schedule at this interval instead of now")
	cmd.Flags().BoolVar(&detach, "detach", false, "start the purge and return without waiting for it")
	out = addOutputFlag(cmd)
	// --older-than is required: numfmt.ParseDuration refuses "" with an example (a usage error, exit 2), where
	// MarkFlagRequired's error would bypass the exit-code mapping.
	return cmd
}

// purgeScheduleID is the Temporal Schedule of `purge --every`.
const purgeScheduleID = "fleetflow-purge"

func schedulePurge(ctx context.Context, g *globals, c client.Client, every time.Duration, in workflows.PurgeInput) error {
	sc := c.ScheduleClient()
	action := &client.ScheduleWorkflowAction{ID: "purge", Workflow: workflows.PurgeArchive, Args: []any{in}, TaskQueue: g.cfg.TaskQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet("purge"))}
	spec := client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: every}}}
	h := sc.GetHandle(ctx, purgeScheduleID)
	if _, err := h.Describe(ctx); err == nil {
		err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(u client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
			u.Description.Schedule.Spec = &spec
			u.Description.Schedule.Action = action
			return &client.ScheduleUpdate{Schedule: &u.Description.Schedule}, nil
		}})
		if err != nil {
			return fmt.Errorf("update schedule %s: %w", purgeScheduleID, err)
		}
		fmt.Printf("schedule %s updated: purge devices retired more than %s ago, every %s\n", purgeScheduleID, in.OlderThan, every)
		return nil
	}
	_, err := sc.Create(ctx, client.ScheduleOptions{ID: purgeScheduleID, Spec: spec, Action: action,
		Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, CatchupWindow: time.Minute})
	if err != nil {
		return fmt.Errorf("create schedule %s: %w", purgeScheduleID, err)
	}
	fmt.Printf("schedule %s created: purge devices retired more than %s ago, every %s\n", purgeScheduleID, in.OlderThan, every)
	return nil
}

// checkTargetArgs checks the targets of an operation that takes device ids or --query or --group: exactly
// one way, a valid group name, and at most maxRetireIDs ids (they travel in the workflow's input).
func checkTargetArgs(ids []string, q, group string) error {
	if (q == "" && group == "") == (len(ids) == 0) {
		return usagef("give device ids or --query (or --group), not both")
	}
	if _, err := fleet.TargetQuery(q, group); err != nil {
		return asUsage(err)
	}
	if len(ids) > maxRetireIDs {
		return usagef("%s device ids: at most %s on the command line (they travel in the workflow's input); select more devices with --query, e.g. by a tag",
			numfmt.Thousands(int64(len(ids))), numfmt.Thousands(maxRetireIDs))
	}
	return nil
}
