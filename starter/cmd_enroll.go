package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/enroll"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/workflows"
)

// localEnrollmentKey is where `dev up` keeps the local stack's enrollment master key.
func localEnrollmentKey() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".fleetflow", "enrollment.key"), nil
}

// masterKey is the enrollment master key from FLEETFLOW_ENROLLMENT_KEY or FLEETFLOW_ENROLLMENT_KEY_FILE, else
// the local stack's (.fleetflow/enrollment.key, made by `dev up`).
func masterKey() ([]byte, error) {
	k, err := enroll.MasterKeyFromEnv()
	if !errors.Is(err, enroll.ErrNoMasterKey) {
		return k, err
	}
	if f, ferr := localEnrollmentKey(); ferr == nil {
		if _, serr := os.Stat(f); serr == nil {
			return enroll.MasterKeyFromFile(f)
		}
	}
	return nil, fmt.Errorf("%w (the local stack makes one: `fleetflow dev up`)", err)
}

// enrollGroup is a group as the CLI shows it: never its key, sealed or not.
type enrollGroup struct {
	Name       string          `json:"name"`
	Kind       string          `json:"kind"`
	State      string          `json:"state"`
	Registered int64           `json:"registered"`
	Refused    int64           `json:"refused"`
	MaxDevices int64           `json:"maxDevices,omitempty"`
	IDPattern  string          `json:"idPattern,omitempty"`
	Tags       json.RawMessage `json:"tags,omitempty"`
	Desired    json.RawMessage `json:"desired,omitempty"`
	CA         string          `json:"ca,omitempty"` // an x509 group's CA subject
	CreatedAt  time.Time       `json:"createdAt"`
}

func showGroup(g fleet.EnrollmentGroup) enrollGroup {
	st := "enabled"
	if g.Disabled {
		st = "disabled"
	}
	out := enrollGroup{Name: g.Name, Kind: string(g.Kind), State: st, Registered: g.Registered, Refused: g.Refused,
		MaxDevices: g.MaxDevices, IDPattern: g.IDPattern, Tags: g.Tags, Desired: g.Desired, CreatedAt: g.CreatedAt}
	if ca, err := enroll.ParseCA(g.CACert); err == nil {
		out.CA = ca.Subject.String()
	}
	return out
}

func newEnrollCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "enroll", Short: "Zero-touch enrollment: groups whose devices register themselves",
		Long: `Zero-touch enrollment (docs/architecture.md, "Zero-touch enrollment"). An enrollment group has a key; a
factory gives each device the secret derived from it — base64(HMAC-SHA256(group key, device id)), as Azure
DPS symmetric-key group enrollment does — and a device that is not registered yet and connects with that
secret is registered on first contact by a RegisterDevice workflow, with the group's tags and desired
properties, then connects as any device. No manifest, no per-device step.

The group key is shown once, when the group is created, and stored only sealed under the enrollment master
key (FLEETFLOW_ENROLLMENT_KEY or FLEETFLOW_ENROLLMENT_KEY_FILE; the local stack keeps one in
.fleetflow/enrollment.key), which gateways need to verify derived secrets. It never enters Temporal.`,
		Example: `  fleetflow enroll create factory-eu --tags '{"region":"eu"}' --desired '{"telemetryInterval":60}' --max 5000 --id-pattern 'eu-[0-9]{6}'
  fleetflow enroll secret --key "$KEY" eu-000001 eu-000002
  fleetflow enroll list
  fleetflow enroll disable factory-eu`,
	}
	cmd.AddCommand(newEnrollCreateCmd(g), newEnrollListCmd(g), newEnrollShowCmd(g),
		newEnrollStateCmd(g, "disable", true), newEnrollStateCmd(g, "enable", false), newEnrollSecretCmd())
	return cmd
}

func newEnrollCreateCmd(g *globals) *cobra.Command {
	var tags, desired, pattern, keyOut, caFile string
	var maxDevices int64
	var out *output
	c := &cobra.Command{
		Use:   "create GROUP [--ca CA.pem] [--tags J] [--desired J] [--max N] [--id-pattern RE] [--key-out FILE]",
		Short: "Create an enrollment group: a symmetric key shown once, or a CA (--ca) whose device certificates register",
		Long: `Create an enrollment group with a new random key and print the key, once. Devices whose secret is
derived from it register on first contact with the group's tags and desired properties. --max caps how
many devices may register; --id-pattern is a regular expression every registering id must match as a
whole. With --key-out the key is written to FILE (mode 0600, never overwriting) instead of printed.

With --ca CA.pem the group has no key: a device presenting, over TLS, a client certificate signed by that CA
whose subject's common name is its id registers on first contact (the registry keeps the certificate's
fingerprint). Only the CA's certificate is stored; its private key stays with whoever issues the devices'
certificates (a factory's own CA, or ` + "`fleetflow ca init`" + `'s).`,
		Example: `  fleetflow enroll create factory-eu --tags '{"region":"eu","line":"A"}' --max 10000 --id-pattern 'eu-[0-9]{6}'
  fleetflow enroll create lab --key-out lab.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !protocol.ValidDeviceID(name) {
				return asUsage(fmt.Errorf("group name %q: use letters, digits, '.', '_' and '-' (as for device ids)", name))
			}
			grp := fleet.EnrollmentGroup{Name: name, Kind: fleet.EnrollSymmetric, MaxDevices: maxDevices, IDPattern: pattern}
			if caFile != "" {
				if keyOut != "" {
					return asUsage(errors.New("--key-out is for symmetric groups; a --ca group has no key"))
				}
				b, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("read --ca: %w", err)
				}
				if _, err := enroll.ParseCA(string(b)); err != nil {
					return asUsage(fmt.Errorf("--ca %s: %w", caFile, err))
				}
				grp.Kind, grp.CACert = fleet.EnrollX509, string(b)
			}
			for _, p := range []struct {
				flag, v string
				dst     *json.RawMessage
			}{{"--tags", tags, &grp.Tags}, {"--desired", desired, &grp.Desired}} {
				if p.v == "" {
					continue
				}
				var obj map[string]any
				if err := json.Unmarshal([]byte(p.v), &obj); err != nil {
					return asUsage(fmt.Errorf("%s: want a JSON object: %v", p.flag, err))
				}
				*p.dst = json.RawMessage(p.v)
			}
			if maxDevices < 0 {
				return asUsage(errors.New("--max must not be negative"))
			}
			if _, err := enroll.CompilePattern(pattern); err != nil {
				return asUsage(err)
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			// The group's tags become its devices' tags: they must satisfy the metadata scheme in force
			// (registrations re-check, since a scheme may be set later).
			sch, err := reg.ActiveScheme(cmd.Context())
			if err != nil {
				return err
			}
			if sch != nil {
				if err := sch.ValidateTags(orObjectBytes(grp.Tags)); err != nil {
					return asUsage(fmt.Errorf("--tags do not satisfy the metadata scheme (version %d): %w", sch.Version, err))
				}
			}
			var key []byte
			if grp.Kind == fleet.EnrollSymmetric {
				mk, err := masterKey()
				if err != nil {
					return err
				}
				sealer, err := enroll.NewSealer(mk)
				if err != nil {
					return err
				}
				if key, err = enroll.NewKey(); err != nil {
					return err
				}
				if grp.SealedKey, err = sealer.Seal(name, key); err != nil {
					return err
				}
			}
			if keyOut != "" {
				// Written before the group exists: a key file without a group is harmless, a group whose key
				// was never delivered is not.
				if err := writeKeyFile(keyOut, enroll.EncodeKey(key)+"\n"); err != nil {
					return err
				}
			}
			if err := reg.CreateEnrollmentGroup(cmd.Context(), grp); err != nil {
				if keyOut != "" {
					_ = os.Remove(keyOut)
				}
				return err
			}
			type created struct {
				enrollGroup
				Key     string `json:"key,omitempty"`
				KeyFile string `json:"keyFile,omitempty"`
			}
			res := created{enrollGroup: showGroup(grp), KeyFile: keyOut}
			res.State = "enabled"
			if keyOut == "" && key != nil {
				res.Key = enroll.EncodeKey(key)
			}
			return out.print(stdout(cmd), res, func() error {
				w := stdout(cmd)
				fmt.Fprintf(w, "enrollment group %s created\n", name)
				if grp.Kind == fleet.EnrollX509 {
					fmt.Fprintf(w, "devices with a client certificate from %s (subject = their id) register on first contact over TLS\n", caFile)
					return nil
				}
				if keyOut != "" {
					fmt.Fprintf(w, "group key written to %s (mode 0600); it is not stored in clear anywhere else\n", keyOut)
				} else {
					fmt.Fprintf(w, "group key (shown once; keep it in your factory's secret store):\n%s\n", res.Key)
				}
				fmt.Fprintf(w, "a device's secret is base64(HMAC-SHA256(key, id)): `fleetflow enroll secret --key KEY ID`\n")
				return nil
			})
		},
	}
	out = addOutputFlag(c)
	c.Flags().StringVar(&tags, "tags", "", "initial tags of the devices that register (JSON object)")
	c.Flags().StringVar(&desired, "desired", "", "initial desired properties of the devices that register (JSON object)")
	c.Flags().Int64Var(&maxDevices, "max", 0, "how many devices may register through the group (0: no cap)")
	c.Flags().StringVar(&pattern, "id-pattern", "", "regular expression every registering id must match as a whole")
	c.Flags().StringVar(&keyOut, "key-out", "", "write the group key to FILE (mode 0600) instead of printing it")
	c.Flags().StringVar(&caFile, "ca", "", "an x509 group: the PEM CA certificate that signs its devices' client certificates")
	return c
}

// writeKeyFile writes data to a new file with mode 0600, synced, refusing to replace an existing file.
func writeKeyFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write group key: %w", err)
	}
	if _, err := io.WriteString(f, data); err != nil {
		f.Close()
		return fmt.Errorf("write group key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync group key %s: %w", path, err)
	}
	return f.Close()
}

func newEnrollListCmd(g *globals) *cobra.Command {
	var out *output
	c := &cobra.Command{
		Use:   "list",
		Short: "List enrollment groups with their registered and refused counts",
		Long: `List the enrollment groups: kind (symmetric key or x509 CA), state, how many devices registered through
each and how many first contacts it refused (disabled, full, id outside the pattern, id taken or retired),
its cap and id pattern. Keys are never shown.`,
		Example: `  fleetflow enroll list
  fleetflow enroll list -o json | jq '.[] | select(.state == "enabled") | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			gs, err := reg.EnrollmentGroups(cmd.Context())
			if err != nil {
				return err
			}
			res := make([]enrollGroup, len(gs))
			for i, gr := range gs {
				res[i] = showGroup(gr)
			}
			return out.print(stdout(cmd), res, func() error {
				w := tabwriter.NewWriter(stdout(cmd), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "GROUP\tKIND\tSTATE\tREGISTERED\tREFUSED\tMAX\tID PATTERN")
				for _, r := range res {
					maxText := "-"
					if r.MaxDevices > 0 {
						maxText = numfmt.Thousands(r.MaxDevices)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Kind, r.State, numfmt.Thousands(r.Registered),
						numfmt.Thousands(r.Refused), maxText, orDash(r.IDPattern))
				}
				return w.Flush()
			})
		},
	}
	out = addOutputFlag(c)
	return c
}

func newEnrollShowCmd(g *globals) *cobra.Command {
	var out *output
	c := &cobra.Command{
		Use:   "show GROUP",
		Short: "Show an enrollment group: its settings and counts (never its key)",
		Long: `Show one enrollment group: kind, state, registered and refused counts, cap, id pattern, the tags and
desired properties its devices get, and for an x509 group the subject of its CA. The key is never shown:
it was printed once, when the group was created.`,
		Example: `  fleetflow enroll show factory-eu
  fleetflow enroll show factory-eu -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			gr, err := reg.EnrollmentGroup(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			res := showGroup(gr)
			return out.print(stdout(cmd), res, func() error {
				w := tabwriter.NewWriter(stdout(cmd), 0, 4, 2, ' ', 0)
				fmt.Fprintf(w, "group\t%s\nkind\t%s\nstate\t%s\nregistered\t%s\nrefused\t%s\n", res.Name, res.Kind, res.State,
					numfmt.Thousands(res.Registered), numfmt.Thousands(res.Refused))
				if res.MaxDevices > 0 {
					fmt.Fprintf(w, "max devices\t%s\n", numfmt.Thousands(res.MaxDevices))
				}
				if res.CA != "" {
					fmt.Fprintf(w, "CA\t%s\n", res.CA)
				}
				fmt.Fprintf(w, "id pattern\t%s\ntags\t%s\ndesired\t%s\ncreated\t%s\n", orDash(res.IDPattern), orObject(res.Tags),
					orObject(res.Desired), res.CreatedAt.Format(time.RFC3339))
				return w.Flush()
			})
		},
	}
	out = addOutputFlag(c)
	return c
}

func newEnrollStateCmd(g *globals, verb string, disable bool) *cobra.Command {
	short := "Stop new registrations through a group (registered devices stay)"
	if !disable {
		short = "Let devices register through a disabled group again"
	}
	long := `Disable an enrollment group: its first contacts are refused from now on (the registering transaction
checks the group, so it is exact at once on every gateway). Devices it registered stay as they are.`
	if !disable {
		long = `Enable a disabled enrollment group again: devices with secrets (or certificates) of the group register on
first contact again; gateways learn of it at once.`
	}
	var out *output
	c := &cobra.Command{
		Use:     verb + " GROUP",
		Short:   short,
		Long:    long,
		Example: "  fleetflow enroll " + verb + " factory-eu",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			changed, err := reg.SetEnrollmentGroupDisabled(cmd.Context(), args[0], disable)
			if err != nil {
				return err
			}
			state := map[bool]string{true: "disabled", false: "enabled"}[disable]
			res := struct {
				Name    string `json:"name"`
				State   string `json:"state"`
				Changed bool   `json:"changed"`
			}{args[0], state, changed}
			return out.print(stdout(cmd), res, func() error {
				if !changed {
					fmt.Fprintf(stdout(cmd), "enrollment group %s was %s already\n", args[0], state)
					return nil
				}
				fmt.Fprintf(stdout(cmd), "enrollment group %s %s\n", args[0], state)
				return nil
			})
		},
	}
	out = addOutputFlag(c)
	return c
}

func newEnrollSecretCmd() *cobra.Command {
	var key, keyFile string
	var out *output
	c := &cobra.Command{
		Use:   "secret (--key KEY | --key-file FILE) ID...",
		Short: "Print the secret a device derives from a group key (what a factory burns into each device)",
		Long: `Print, for each id, the secret the device connects with: base64(HMAC-SHA256(group key, id)). It runs
offline: it reads no registry and needs no master key, only the group key.`,
		Example: `  fleetflow enroll secret --key-file lab.key lab-001 lab-002`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := groupKeyFlag(key, keyFile)
			if err != nil {
				return err
			}
			type derived struct {
				ID     string `json:"id"`
				Secret string `json:"secret"`
			}
			res := make([]derived, len(args))
			for i, id := range args {
				res[i] = derived{id, enroll.DeriveSecret(k, id)}
			}
			return out.print(stdout(cmd), res, func() error {
				for _, d := range res {
					fmt.Fprintf(stdout(cmd), "%s %s\n", d.ID, d.Secret)
				}
				return nil
			})
		},
	}
	out = addOutputFlag(c)
	c.Flags().StringVar(&key, "key", "", "the group key, as `enroll create` printed it")
	c.Flags().StringVar(&keyFile, "key-file", "", "file holding the group key (as `enroll create --key-out` wrote it)")
	return c
}

// groupKeyFlag reads a group key given on the command line or in a file.
func groupKeyFlag(key, keyFile string) ([]byte, error) {
	switch {
	case key != "" && keyFile != "":
		return nil, asUsage(errors.New("give --key or --key-file, not both"))
	case keyFile != "":
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("read group key: %w", err)
		}
		key = string(b)
	case key == "":
		return nil, asUsage(errors.New("--key or --key-file is required"))
	}
	k, err := enroll.ParseKey(key)
	if err != nil {
		return nil, asUsage(fmt.Errorf("group key: %w", err))
	}
	return k, nil
}

// temporalRegistrar registers devices for the gateway by running RegisterDevice workflows: the write
// belongs to an operation, which Temporal keeps durable and visible. It dials Temporal on first use, so a
// gateway starts without it and only first contacts wait for it.
type temporalRegistrar struct {
	g  *globals
	mu sync.Mutex
	c  client.Client
}

func (r *temporalRegistrar) client() (client.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		return r.c, nil
	}
	c, err := dialTemporal(r.g)
	if err != nil {
		return nil, err
	}
	r.c = c
	return c, nil
}

// Close closes the Temporal connection, if one was made.
func (r *temporalRegistrar) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		r.c.Close()
	}
}

// RegisterBatch runs one RegisterDevice workflow for the first contacts the Batcher gathered and waits for
// its outcomes.
func (r *temporalRegistrar) RegisterBatch(ctx context.Context, regs []fleet.Registration) ([]fleet.RegistrationOutcome, error) {
	c, err := r.client()
	if err != nil {
		return nil, err
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, fmt.Errorf("workflow id: %w", err)
	}
	// Named after its first device, so the Temporal UI finds a device's registration by its id.
	id := fmt.Sprintf("register-%s-%x", regs[0].DeviceID, suffix)
	summary := fmt.Sprintf("Register %s through enrollment group %s (first contact)", regs[0].DeviceID, regs[0].Group)
	if len(regs) > 1 {
		summary = fmt.Sprintf("Register %s and %d more devices (first contacts through enrollment groups)", regs[0].DeviceID, len(regs)-1)
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: r.g.cfg.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE, WorkflowExecutionErrorWhenAlreadyStarted: true,
		WorkflowExecutionTimeout: 2 * time.Minute,
		StaticSummary:            summary,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpEnroll),
			searchattr.State.ValueSet(searchattr.StateRunning), searchattr.Total.ValueSet(int64(len(regs)))),
	}, workflows.RegisterDevice, workflows.RegisterDeviceInput{Registrations: regs})
	if err != nil {
		return nil, fmt.Errorf("start registration %s: %w", id, err)
	}
	var res workflows.RegisterDeviceResult
	if err := run.Get(ctx, &res); err != nil {
		return nil, fmt.Errorf("registration %s: %w", id, err)
	}
	return res.Outcomes, nil
}

// Gathering first contacts (docs/architecture.md, "Zero-touch enrollment"): a batch leaves when it holds
// workflows.MaxRegistrations registrations or registerWait after its first, and may take registerTimeout.
const (
	registerWait    = 20 * time.Millisecond
	registerTimeout = 45 * time.Second
)

// enrollerFor builds the gateway's Enroller when a master key is configured; nil (enrollment off) when none
// is, which the gateway logs.
func enrollerFor(g *globals, reg enroll.GroupLister, log interface{ Info(string, ...any) }) (*enroll.Enroller, *temporalRegistrar, error) {
	mk, err := enroll.MasterKeyFromEnv()
	if errors.Is(err, enroll.ErrNoMasterKey) {
		log.Info("zero-touch enrollment off: no enrollment master key (" + enroll.MasterKeyEnv + " or " + enroll.MasterKeyFileEnv + ")")
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	sealer, err := enroll.NewSealer(mk)
	if err != nil {
		return nil, nil, err
	}
	r := &temporalRegistrar{g: g}
	return enroll.New(reg, sealer, enroll.NewBatcher(r, workflows.MaxRegistrations, registerWait, registerTimeout), nil), r, nil
}

// orObject shows an absent JSON object as {}.
func orObject(b json.RawMessage) string {
	if len(b) == 0 {
		return "{}"
	}
	return string(b)
}

// orObjectBytes is b, or {} when it is empty.
func orObjectBytes(b json.RawMessage) []byte {
	if len(b) == 0 {
		return []byte("{}")
	}
	return b
}
