package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func newDevicesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "devices", Short: "Read the device registry",
		Long: `Read the device registry: one device's identity and connection state, twin queries over the fleet,
a device's timeline; and quarantine a device (disable) or let it back (enable).`,
		Example: `  fleetflow devices get sensor-0042
  fleetflow devices query "SELECT * FROM devices WHERE tags.region = 'eu'"
  fleetflow devices history sensor-0042`,
	}
	var out *output
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a device's identity, status and connection state",
		Long: `Show a device's identity from the registry: status (active, disabled, retired), connection state and
session, when it was last seen, which credentials are set, which operation provisioned it, and its lineage
(the device it replaces or that replaced it).`,
		Example: `  fleetflow devices get sensor-0042
  fleetflow devices get sensor-0042 -o json | jq .status`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := readDevice(cmd, g, args[0], (*registry.Registry).GetDevice)
			if err != nil {
				return err
			}
			return out.print(stdout(cmd), d, func() error { return printDevice(d) })
		},
	}
	out = addOutputFlag(get)
	cmd.AddCommand(get, newQueryCmd(g), newDeviceHistoryCmd(g))
	cmd.AddCommand(devicesLifecycleCmds(g)...)
	return cmd
}

// printDevice prints a device's identity as a two-column table.
func printDevice(d registry.Device) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "id\t%s\nstatus\t%s\n", d.ID, d.Status)
	conn := "disconnected"
	if d.Online {
		conn = fmt.Sprintf("connected (session %d)", d.Session)
	}
	fmt.Fprintf(w, "connection\t%s\n", conn)
	fmt.Fprintf(w, "last seen\t%s\n", fmtTime(d.LastSeen))
	fmt.Fprintf(w, "connected at\t%s\n", fmtTime(d.ConnectedAt))
	fmt.Fprintf(w, "credentials\tprimary %s, secondary %s\n", yesNo(d.HasSecret1), yesNo(d.HasSecret2))
	if d.AuthSlot != nil && *d.AuthSlot > 0 {
		fmt.Fprintf(w, "  in use\tslot %d (the newest session's)\n", *d.AuthSlot)
	}
	if d.CredentialExpiresAt != nil {
		fmt.Fprintf(w, "  expire\t%s\n", fmtTime(d.CredentialExpiresAt))
	}
	certSlot := func(slot int, fp string, notAfter *time.Time) {
		if fp == "" {
			return
		}
		line := fmt.Sprintf("certificate %d\tSHA-256 %s, expires %s", slot, fp, certExpiry(notAfter))
		if d.CertSlotInUse == slot {
			line += " (in use)"
		}
		fmt.Fprintln(w, line)
	}
	certSlot(1, d.CertFingerprint, d.CertNotAfter)
	certSlot(2, d.Cert2Fingerprint, d.Cert2NotAfter)
	fmt.Fprintf(w, "created\t%s\nupdated\t%s\n", d.CreatedAt.Format(time.RFC3339), d.UpdatedAt.Format(time.RFC3339))
	if d.Provisioned != "" {
		fmt.Fprintf(w, "provisioned by\t%s\n", d.Provisioned)
	}
	if d.RetiredAt != nil {
		fmt.Fprintf(w, "retired\t%s\n", d.RetiredAt.Format(time.RFC3339))
	}
	if d.Replaces != "" {
		fmt.Fprintf(w, "replaces\t%s\n", d.Replaces)
	}
	if d.ReplacedBy != "" {
		fmt.Fprintf(w, "replaced by\t%s\n", d.ReplacedBy)
	}
	return w.Flush()
}

// readDevice opens the registry, reads one device with read, and words "not found" for the operator.
func readDevice[T any](cmd *cobra.Command, g *globals, id string,
	read func(*registry.Registry, context.Context, string) (T, error)) (T, error) {
	var zero T
	reg, err := openRegistry(cmd, g)
	if err != nil {
		return zero, err
	}
	defer reg.Close()
	v, err := read(reg, cmd.Context(), id)
	if errors.Is(err, fleet.ErrNotFound) {
		return zero, fmt.Errorf("no device %q in the registry", id)
	}
	return v, err
}

func openRegistry(cmd *cobra.Command, g *globals) (*registry.Registry, error) {
	return openRegistryCtx(cmd.Context(), g)
}

func openRegistryCtx(ctx context.Context, g *globals) (*registry.Registry, error) {
	return openRegistryWith(ctx, g, registry.Options{})
}

// openRegistryWith opens the registry; a connection failure gets a hint about the stack, a schema that
// is not this binary's keeps its own message (which says what to run).
func openRegistryWith(ctx context.Context, g *globals, opts registry.Options) (*registry.Registry, error) {
	reg, err := registry.OpenWithOptions(ctx, g.cfg.DatabaseURL, opts)
	if errors.Is(err, registry.ErrSchemaOutdated) || errors.Is(err, registry.ErrSchemaNewer) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w (is the stack up? run `make up` or set FLEETFLOW_DATABASE_URL)", err)
	}
	return reg, nil
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.Format(time.RFC3339) + " (" + time.Since(*t).Round(time.Second).String() + " ago)"
}

func yesNo(b bool) string {
	if b {
		return "set"
	}
	return "empty"
}

// cell renders a query value for a table.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case time.Time:
		return x.Format(time.RFC3339)
	case json.RawMessage:
		return string(x)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSpace(string(b))
}

// certExpiry is a certificate slot's end as `devices show` and `credentials status` print it: recorded for
// the certificates provisioning issued and renewals signed, not for enrolled ones nor for those provisioned
// before migration 026 (docs/architecture.md, "Device certificates", "Certificate renewal").
func certExpiry(t *time.Time) string {
	if t == nil {
		return "not recorded (enrolled, or provisioned before ends were recorded)"
	}
	return t.UTC().Format(time.RFC3339)
}
