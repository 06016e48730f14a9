package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// newCredentialsCmd is `credentials rotate|status`.
func newCredentialsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "credentials", Short: "Credential lifecycle: rotate device secrets, renew device certificates",
		Long: `Device credentials have a life: an expiry, set by provisioning (--credential-validity) and enforced by the
gateway at every CONNECT, and rotation, which gives devices new secrets, or new certificates, over their own
sessions without replacing them (docs/architecture.md, "Credential rotation", "Certificate renewal").`,
		Example: `  fleetflow credentials rotate --query "SELECT * FROM devices WHERE tags.site = 'ber-1'"
  fleetflow credentials status rotate-credentials-20261206-101054.760 --failed`}
	cmd.AddCommand(newRotateCmd(g))
	var failed bool
	var out *output
	within, limit := 30*24*time.Hour, 20
	status := &cobra.Command{
		Use:   "status [ID] [--within 30d]",
		Short: "The fleet's credentials by kind and expiry, or a credential rotation's devices per outcome (as job status)",
		Long: `Without an id: the devices that are not retired per credential kind (secret, or certificate: those a
rotation renews a certificate for), with how many have expired (refused at CONNECT), expire within --within and
have no expiry; the devices that have expired or expire within --within, soonest first; and the devices whose
newest rotation they missed (they did not connect with the new credential before the grace ended and keep
both; rotate them again). A certificate device's expiry is the registry's or its certificates' end, whichever
comes first, as the gateway enforces it.

With a rotation's id: its record and its devices per outcome: succeeded (connected with the new secret or
certificate, old one revoked), running (sent, waiting for the device to connect with it), failed (unknown,
retired, disabled, devices without the methods, that could not store the credential or whose certificate
request was refused), offline, timed out (missed the grace; both credentials kept). Certificate devices are
listed with each certificate slot's expiry and the slot in use. --failed lists the devices not rotated and why.`,
		Example: `  fleetflow credentials status --within 90d
  fleetflow credentials status rotate-credentials-20261206-101054.760 --failed -o json`,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateJobs, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				return jobStatus(cmd, g, args[0], failed, out)
			}
			if failed {
				return usagef("--failed lists a rotation's devices: give its id (fleetflow credentials status ID --failed)")
			}
			if within <= 0 || limit <= 0 {
				return usagef("--within and --limit must be positive")
			}
			return credentialOverview(cmd, g, within, limit, out)
		},
	}
	out = addOutputFlag(status)
	status.Flags().BoolVar(&failed, "failed", false, "with a rotation's id: list the devices that were not rotated (failed, offline, missed) and why")
	status.Flags().Var(newDurationFlag(&within, "within"), "within", "without an id: count and list the credentials that expire within this long (e.g. 90d)")
	status.Flags().IntVar(&limit, "limit", limit, "without an id: list at most this many expiring devices and devices that missed their rotation")
	cmd.AddCommand(status)
	return cmd
}

// credentialOverviewView is what `credentials status` without an id prints with -o json|yaml.
type credentialOverviewView struct {
	At     time.Time `json:"at"`
	Within string    `json:"within"`
	registry.CredentialOverview
}

// credentialOverview prints the fleet's credentials by kind and expiry, the soonest to expire, and the
// devices that missed their newest rotation.
func credentialOverview(cmd *cobra.Command, g *globals, within time.Duration, limit int, out *output) error {
	ctx := cmd.Context()
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	now := time.Now().UTC().Truncate(time.Second)
	o, err := reg.CredentialOverview(ctx, now, within, limit)
	if err != nil {
		return err
	}
	view := credentialOverviewView{At: now, Within: numfmt.FormatDuration(within), CredentialOverview: o}
	return out.print(stdout(cmd), view, func() error {
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "KIND\tDEVICES\tEXPIRED\tEXPIRE WITHIN %s\tNO EXPIRY\n", view.Within)
		for _, k := range o.Kinds {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", k.Kind, numfmt.Thousands(k.Devices), numfmt.Thousands(k.Expired),
				numfmt.Thousands(k.Expiring), numfmt.Thousands(k.NoExpiry))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Println()
		if len(o.Expiring) == 0 {
			fmt.Printf("no credential expires within %s\n", view.Within)
		} else {
			w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "EXPIRING DEVICE\tKIND\tEXPIRES\tONLINE")
			for _, d := range o.Expiring {
				when := "in " + numfmt.FormatDuration(d.ExpiresAt.Sub(now).Round(time.Minute))
				if !d.ExpiresAt.After(now) {
					when = "expired " + numfmt.FormatDuration(now.Sub(d.ExpiresAt).Round(time.Minute)) + " ago"
				}
				fmt.Fprintf(w, "%s\t%s\t%s (%s)\t%v\n", d.DeviceID, d.Kind, d.ExpiresAt.UTC().Format(time.RFC3339), when, d.Online)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if n := expiringTotal(o.Kinds); n > int64(len(o.Expiring)) {
				fmt.Printf("… and %s more (--limit, or fleetflow devices query)\n", numfmt.Thousands(n-int64(len(o.Expiring))))
			}
		}
		fmt.Println()
		if o.Missed == 0 {
			fmt.Println("no device missed its newest credential rotation")
			return nil
		}
		fmt.Printf("%s devices missed their newest credential rotation (they keep both credentials; rotate them again):\n", numfmt.Thousands(o.Missed))
		w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "DEVICE\tROTATION\tCLOSED\tREASON")
		for _, m := range o.MissedDevices {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", m.DeviceID, m.JobID, m.At.UTC().Format(time.RFC3339), m.Reason)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if o.Missed > int64(len(o.MissedDevices)) {
			fmt.Printf("… and %s more (--limit)\n", numfmt.Thousands(o.Missed-int64(len(o.MissedDevices))))
		}
		return nil
	})
}

// expiringTotal is how many devices have expired or expire within the window, all kinds.
func expiringTotal(kinds []registry.CredentialKindCounts) int64 {
	var n int64
	for _, k := range kinds {
		n += k.Expired + k.Expiring
	}
	return n
}

func newRotateCmd(g *globals) *cobra.Command {
	var q, group string
	var detach, dryRun bool
	grace, validity, timeout := workflows.DefaultRotateGrace, time.Duration(0), workflows.DefaultMethodTimeout
	certValidity := pki.DeviceCertValidity
	var out *output
	cmd := &cobra.Command{
		Use:   "rotate ID... | --query QUERY | --group NAME [--grace 7d]",
		Short: "Give devices new secrets or certificates: delivered over their session, the old ones revoked once the new ones work",
		Long: `Start a RotateCredentials workflow over the given devices or the devices a twin query selects
(docs/architecture.md, "Credential rotation"). For each device, in batches: a new secret is generated by the
worker (it never enters Temporal), its digest written into the device's free credential slot, and the secret
delivered over the device's authenticated session with the rotateCredentials method; the device stores it and
reconnects with it, and only then is its old secret revoked. A device that is offline, or does not support the
method, keeps its secret and is reported; one that stored the new secret but does not connect with it before
--grace ends keeps both secrets and is reported. Retired, disabled and unknown devices are reported per device.

Devices that authenticate with a client certificate renew it the same way (docs/architecture.md, "Certificate
renewal"): the device generates a new key pair, which never leaves it, and answers a certificate signing
request (renewCertificate); the worker checks it (signature, subject = the device id, key type and size) and
signs it with the fleet CA (FLEETFLOW_DEVICE_CA_DIR of the worker, by default .fleetflow/ca, as ` + "`ca init`" + `),
valid for --cert-validity; the certificate's fingerprint goes into the free certificate slot and the
certificate to the device (installCertificate), which stores it with its key and reconnects with it; then
the old certificate is revoked. One rotation may hold both kinds of devices.`,
		Example: `  fleetflow credentials rotate dev-0001 dev-0002
  fleetflow credentials rotate --query "SELECT * FROM devices WHERE tags.site = 'ber-1'" --grace 2d
  fleetflow credentials rotate --query "SELECT * FROM devices" --credential-validity 365d --detach -o json
  fleetflow credentials rotate --query "SELECT * FROM devices WHERE tags.line = 3" --cert-validity 730d
  fleetflow credentials rotate --group leaked-batch --grace 1d`,
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkTargetArgs(args, q, group); err != nil {
				return err
			}
			if grace <= 0 || timeout <= 0 || certValidity <= 0 {
				return usagef("--grace, --timeout and --cert-validity must be positive")
			}
			if dryRun {
				return rotateDryRun(cmd.Context(), g, args, q, group, out)
			}
			return startRotate(cmd.Context(), g, args, q, group, rotateTimes{grace: grace, validity: validity, certValidity: certValidity, timeout: timeout}, detach, out)
		},
	}
	out = addOutputFlag(cmd)
	cmd.Flags().StringVar(&q, "query", "", "twin query selecting the devices")
	_ = cmd.RegisterFlagCompletionFunc("query", completeQueryPaths(g))
	addGroupFlag(g, cmd, &group)
	cmd.Flags().Var(newDurationFlag(&grace, "grace"), "grace", "how long devices have to connect with their new secret (e.g. 7d); they keep the old one meanwhile")
	cmd.Flags().Var(newDurationFlag(&validity, "credential-validity"), "credential-validity",
		"the new credentials expire this long after the device first connects with them (e.g. 365d); unset keeps each device's expiry")
	cmd.Flags().Var(newDurationFlag(&certValidity, "cert-validity"), "cert-validity",
		"validity of the certificates renewals sign (as provision --auth x509: "+numfmt.FormatDuration(pki.DeviceCertValidity)+")")
	cmd.Flags().Var(newDurationFlag(&timeout, "timeout"), "timeout", "how long a device has to store its new secret and answer")
	cmd.Flags().BoolVar(&detach, "detach", false, "start and return without waiting")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print how many of the devices would get a new secret and how many a new certificate, and start nothing")
	return cmd
}

// rotateDryRunView is what `credentials rotate --dry-run -o json|yaml` prints.
type rotateDryRunView struct {
	Query        string `json:"query"`
	Selected     int64  `json:"selected"`
	Secrets      int64  `json:"secrets"`      // would get a new secret
	Certificates int64  `json:"certificates"` // would renew their certificate
	NotActive    int64  `json:"notActive"`    // unknown, disabled or retired: reported per device, not rotated
}

// rotateDryRun counts a rotation's targets per credential kind, as the rotation would treat them, and starts
// nothing: the CLI only reads.
func rotateDryRun(ctx context.Context, g *globals, ids []string, q, group string, out *output) error {
	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	view := rotateDryRunView{Query: q}
	if q != "" || group != "" {
		if view.Query, view.Selected, err = resolveTargets(ctx, reg, q, group); err != nil {
			return err
		}
		ids = nil
	} else {
		view.Query = "ids: " + strings.Join(ids, " ")
	}
	if view.Secrets, view.Certificates, view.NotActive, err = reg.CredentialKindsOf(ctx, view.Query, ids); err != nil {
		return err
	}
	if ids != nil {
		view.Selected = view.Secrets + view.Certificates + view.NotActive
	}
	return out.print(os.Stdout, view, func() error {
		fmt.Printf("the rotation would cover %s devices: %s would get a new secret, %s would renew their certificate",
			numfmt.Thousands(view.Selected), numfmt.Thousands(view.Secrets), numfmt.Thousands(view.Certificates))
		if view.NotActive > 0 {
			fmt.Printf("; %s are unknown, disabled or retired and would be reported, not rotated", numfmt.Thousands(view.NotActive))
		}
		fmt.Println()
		if view.Certificates > 0 {
			fmt.Println("certificate renewals need a worker with the fleet CA (FLEETFLOW_DEVICE_CA_DIR)")
		}
		return nil
	})
}

// rotateTimes are a rotation's durations.
type rotateTimes struct {
	grace, validity, certValidity, timeout time.Duration
}

func startRotate(ctx context.Context, g *globals, ids []string, q, group string, tm rotateTimes, detach bool, out *output) error {
	grace, validity, timeout := tm.grace, tm.validity, tm.timeout
	reg, c, err := openBackends(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	defer c.Close()
	id := "rotate-credentials-" + time.Now().UTC().Format("20060102-150405.000")
	spec := []byte(fmt.Sprintf(`{"grace":%q,"credentialValidity":%q,"certValidity":%q,"timeout":%q}`, numfmt.FormatDuration(grace),
		numfmt.FormatDuration(validity), numfmt.FormatDuration(tm.certValidity), numfmt.FormatDuration(timeout)))
	// The job and its target set are created by the workflow's first step; every write is the workflow's.
	in := workflows.JobInput{JobID: id, Kind: fleet.JobRotate, Spec: spec, Grace: grace, CredentialValidity: validity, Timeout: timeout,
		CertValidity: tm.certValidity, BatchSize: workflows.DefaultRotateBatchSize}
	if q != "" || group != "" {
		var n int64
		if q, n, err = resolveTargets(ctx, reg, q, group); err != nil {
			return err
		}
		if n == 0 {
			return usagef("the query (or group) selects no devices; nothing to rotate")
		}
		in.Query = q
	} else {
		in.Query, in.IDs = "ids: "+strings.Join(ids, " "), ids
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		StaticSummary: "Rotate credentials: " + retireTargets(q, ids),
		StaticDetails: fmt.Sprintf("Grace: %s", numfmt.FormatDuration(grace)),
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpRotateCredentials),
			searchattr.State.ValueSet(searchattr.StateRunning)),
	}, workflows.RotateCredentials, in)
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	total, err := awaitCreated(ctx, c, run, id, "credential rotation", detachLimit(detach), jobCreated)
	if err != nil {
		return startedButPending(ctx, err, out, operationStarted{ID: id, Summary: "rotate credentials", TemporalURL: workflowURL(g, id)},
			"credential rotation", "fleetflow credentials status "+id)
	}
	what := "rotate the credentials of " + numfmt.Thousands(total) + " devices"
	started := operationStarted{ID: id, Summary: what, Total: total, TemporalURL: workflowURL(g, id)}
	fmt.Fprintf(hintWriter(out), "%s started: %s\nwatch it: %s\n", id, what, started.TemporalURL)
	if detach {
		return out.print(os.Stdout, started, nil)
	}
	res, waited, err := awaitJob(ctx, c, run, id, "credential rotation")
	if !waited || err != nil {
		return err
	}
	devs, err := reg.JobDevices(ctx, id, nil, 100000)
	if err != nil {
		return err
	}
	r := rotateResult{ID: id, State: res.State, Unknown: []string{}, NotRotated: []registry.JobDevice{}}
	for _, d := range devs {
		switch {
		case d.State == fleet.JobSucceeded:
			r.Rotated++
		case d.State == fleet.JobFailed && d.Error == fleet.RotateUnknown:
			r.Unknown = append(r.Unknown, d.DeviceID)
		default:
			r.NotRotated = append(r.NotRotated, d)
		}
	}
	if err := out.print(os.Stdout, r, func() error {
		fmt.Printf("%s: %d rotated, %d not rotated, %d unknown\n", r.State, r.Rotated, len(r.NotRotated), len(r.Unknown))
		if len(r.Unknown) > 0 {
			fmt.Printf("unknown devices: %s\n", strings.Join(r.Unknown[:min(len(r.Unknown), 20)], ", "))
		}
		for _, d := range r.NotRotated[:min(len(r.NotRotated), 20)] {
			fmt.Printf("not rotated: %s (%s: %s)\n", d.DeviceID, strings.ReplaceAll(string(d.State), "_", " "), d.Error)
		}
		if len(r.NotRotated) > 20 {
			fmt.Printf("… and %d more: fleetflow credentials status %s --failed\n", len(r.NotRotated)-20, id)
		}
		return nil
	}); err != nil {
		return err
	}
	switch {
	case len(r.Unknown) > 0:
		return usagef("%d of the given devices do not exist", len(r.Unknown))
	case len(r.NotRotated) > 0:
		return partialf("%s: %d devices were not rotated", id, len(r.NotRotated))
	}
	return nil
}

// rotateResult is what `credentials rotate -o json|yaml` prints once the rotation has ended.
type rotateResult struct {
	ID         string               `json:"id"`
	State      string               `json:"state"`
	Rotated    int                  `json:"rotated"`
	Unknown    []string             `json:"unknown"`
	NotRotated []registry.JobDevice `json:"notRotated"`
}
