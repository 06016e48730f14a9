package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/twin"
)

func newTwinCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "twin", Short: "Read and write device twins",
		Long: `Read and write device twins: tags (the operator's labels, used by queries), desired properties (what
the device should do) and reported properties (what the device says it does).`,
		Example: `  fleetflow twin get sensor-0042
  fleetflow twin set-desired sensor-0042 --patch '{"telemetryInterval": 30}'
  fleetflow twin set-tags sensor-0042 --patch '{"region": "eu"}'`,
	}
	var out *output
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a device's twin: tags, desired vs reported (with the keys not yet acknowledged), versions and etag",
		Long: `Show a device's twin. The text form pairs every desired key with what the device reports for it and
lists the keys not acknowledged yet; -o json and -o yaml give the whole twin in Azure IoT Hub's shape, plus
the device's lineage (replaces, replacedBy) when it has one.`,
		Example: `  fleetflow twin get sensor-0042
  fleetflow twin get sensor-0042 -o json | jq .properties.reported`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := readDevice(cmd, g, args[0], (*registry.Registry).GetTwin)
			if err != nil {
				return err
			}
			// Lineage is not part of Azure's twin shape (nor of twin/get, the devices' hot path): the CLI
			// reads it from the identity and adds it next to the twin.
			d, err := readDevice(cmd, g, args[0], (*registry.Registry).GetDevice)
			if err != nil {
				return err
			}
			var doc any = t
			if d.Replaces != "" || d.ReplacedBy != "" {
				doc = struct {
					twin.Twin
					Replaces   string `json:"replaces,omitempty"`
					ReplacedBy string `json:"replacedBy,omitempty"`
				}{t, d.Replaces, d.ReplacedBy}
			}
			return out.print(stdout(cmd), doc, func() error { return printTwin(t, d) })
		},
	}
	out = addOutputFlag(get)
	cmd.AddCommand(get, newTwinWriteCmd(g, twin.Desired), newTwinWriteCmd(g, twin.Tags))
	return cmd
}

// printTwin renders the operator's view: every desired key next to what the device reports for it.
func printTwin(t twin.Twin, d registry.Device) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "device\t%s (%s, %s)\n", t.DeviceID, t.Status, t.ConnectionState)
	if d.Replaces != "" {
		fmt.Fprintf(w, "replaces\t%s\n", d.Replaces)
	}
	if d.ReplacedBy != "" {
		fmt.Fprintf(w, "replaced by\t%s\n", d.ReplacedBy)
	}
	fmt.Fprintf(w, "etag\t%s\n", t.ETag)
	fmt.Fprintf(w, "versions\ttags %d, desired %d, reported %d\n", t.TagsVersion, t.Properties.Desired.Version, t.Properties.Reported.Version)
	fmt.Fprintf(w, "tags\t%s\n", compactJSON(t.Tags))
	if err := w.Flush(); err != nil {
		return err
	}
	rows, pending := desiredVsReported(t.Properties.Desired.Doc, t.Properties.Reported.Doc)
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DESIRED KEY\tDESIRED\tREPORTED\tSTATE")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r[0], r[1], r[2], r[3])
	}
	if len(rows) == 0 {
		fmt.Fprintln(w, "(no desired properties)\t\t\t")
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(pending) > 0 {
		fmt.Printf("\nnot yet acknowledged: %v\n", pending)
	}
	fmt.Printf("\nreported: %s\n", compactJSON(t.Properties.Reported.Doc))
	return nil
}

// desiredVsReported pairs each desired key with the reported value. A key is acknowledged when the device
// reports the same value; firmware is acknowledged when the reported version matches.
func desiredVsReported(desired, reported []byte) (rows [][4]string, pending []string) {
	var d, r map[string]json.RawMessage
	_ = json.Unmarshal(desired, &d)
	_ = json.Unmarshal(reported, &r)
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		dv, rv := d[k], r[k]
		state := "acknowledged"
		if !acknowledged(k, dv, rv) {
			state, pending = "pending", append(pending, k)
		}
		rs := "-"
		if rv != nil {
			rs = compactJSON(rv)
		}
		rows = append(rows, [4]string{k, compactJSON(dv), rs, state})
	}
	return rows, pending
}

func acknowledged(key string, desired, reported json.RawMessage) bool {
	if reported == nil {
		return false
	}
	if key == "firmware" {
		var dv, rv struct {
			Version string `json:"version"`
		}
		return json.Unmarshal(desired, &dv) == nil && json.Unmarshal(reported, &rv) == nil && dv.Version == rv.Version
	}
	var a, b any
	if json.Unmarshal(desired, &a) != nil || json.Unmarshal(reported, &b) != nil {
		return false
	}
	ja, _ := json.Marshal(a) // re-encoding sorts object keys, so equal documents compare equal
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	s := buf.String()
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// newTwinWriteCmd is `twin set-desired` or `twin set-tags`.
func newTwinWriteCmd(g *globals, section twin.Section) *cobra.Command {
	var patch, ifMatch string
	var out *output
	name, what := "set-tags", "tags"
	example := `  fleetflow twin set-tags sensor-0042 --patch '{"region": "eu", "ring": "canary"}'
  fleetflow twin set-tags sensor-0042 --patch '{"ring": null}'   # null deletes a key`
	if section == twin.Desired {
		name, what = "set-desired", "desired properties"
		example = `  fleetflow twin set-desired sensor-0042 --patch '{"telemetryInterval": 30}'
  fleetflow twin set-desired sensor-0042 --patch '{"mode": "eco"}' --if-match "$(fleetflow twin get sensor-0042 -o json | jq -r .etag)"`
	}
	cmd := &cobra.Command{
		Use:   name + " ID --patch JSON",
		Short: "Merge a JSON merge patch (RFC 7386) into a device's " + what,
		Long: "Merge a JSON merge patch (RFC 7386; null deletes a key) into a device's " + what + ".\n" +
			"With --if-match the write happens only if the twin's etag is still ETAG (optimistic concurrency)." +
			map[bool]string{true: "\nAn online device gets the patch at once; an offline one gets the whole desired document when it reconnects.", false: ""}[section == twin.Desired],
		Example:           example,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if patch == "" {
				return usagef("--patch is required, e.g. --patch '{\"telemetryInterval\": 30}'")
			}
			if _, err := twin.ParseObject(section, []byte(patch)); err != nil {
				return usagef("--patch: %w", err)
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			t, err := reg.UpdateTwin(cmd.Context(), id, section, []byte(patch), ifMatch)
			switch {
			case errors.Is(err, fleet.ErrNotFound):
				return fmt.Errorf("no device %q in the registry", id)
			case errors.Is(err, fleet.ErrPreconditionFailed):
				return fmt.Errorf("not written: %w; read the twin again and retry with --if-match %s", err, t.ETag)
			case errors.Is(err, scheme.ErrViolation):
				// The merged tags would break the scheme in force: invalid input (docs/architecture.md,
				// "Metadata scheme").
				return usagef("not written: %w", err)
			case err != nil:
				return err
			}
			res := twinWriteResult{DeviceID: id, Section: string(section), ETag: t.ETag}
			if section == twin.Desired {
				v := t.Properties.Desired.Version
				res.DesiredVersion = &v
				res.Delivery = pushDesired(cmd.Context(), g, id, t.ConnectionState, v, patch)
			}
			return out.print(stdout(cmd), res, func() error {
				fmt.Printf("%s: %s updated, etag %s\n", id, what, t.ETag)
				if res.DesiredVersion == nil {
					return nil
				}
				fmt.Printf("desired version %d\n", *res.DesiredVersion)
				switch res.Delivery {
				case deliveryOffline:
					fmt.Println("device offline: it gets the desired state when it reconnects")
				case deliveryPushed:
					fmt.Println("pushed to the device")
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&patch, "patch", "", "JSON merge patch")
	cmd.Flags().StringVar(&ifMatch, "if-match", "", "write only if the twin's etag is this (from `twin get`)")
	out = addOutputFlag(cmd)
	return cmd
}

// How a desired patch reached the device, in `twin set-desired`'s result.
const (
	deliveryPushed  = "pushed"      // published to the online device
	deliveryOffline = "offline"     // the device gets the whole desired document when it reconnects
	deliveryFailed  = "push-failed" // online, but the push failed; the device gets it on its next reconnect
)

// twinWriteResult is what `twin set-desired|set-tags -o json|yaml` prints.
type twinWriteResult struct {
	DeviceID       string `json:"deviceId"`
	Section        string `json:"section"`
	ETag           string `json:"etag"`
	DesiredVersion *int64 `json:"desiredVersion,omitempty"`
	Delivery       string `json:"delivery,omitempty"`
}

// pushDesired pushes a desired patch to an online device. A failure is a warning on stderr, not an error:
// the write is done, and the device gets the desired document on its next reconnect.
func pushDesired(ctx context.Context, g *globals, id, connection string, version int64, patch string) string {
	if connection != "connected" {
		return deliveryOffline
	}
	ch, err := dialChannel(ctx, g)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: could not push the patch (%v); the device gets it on its next reconnect\n", err)
		return deliveryFailed
	}
	defer ch.Close()
	if _, err := ch.PublishDesired(ctx, []fleet.DesiredPush{{DeviceID: id, Version: version,
		Patch: []byte(patch)}}); err != nil {
		fmt.Fprintf(os.Stderr, "warning: push failed (%v); the device gets it on its next reconnect\n", err)
		return deliveryFailed
	}
	return deliveryPushed
}

// dialChannel connects the CLI to the device channel: the NATS servers of FLEETFLOW_NATS_URL, through which
// the gateway holding a device's session relays to it.
func dialChannel(ctx context.Context, g *globals) (*channel.Channel, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch, err := channel.Dial(dctx, channel.Config{URL: g.cfg.NATSURL, CAFile: natsCA(g), Name: "fleetflow-cli"})
	if err != nil {
		return nil, fmt.Errorf("%w (is the stack up? run `make up` or set FLEETFLOW_NATS_URL)", err)
	}
	return ch, nil
}

// natsCA is the CA file to verify tls:// NATS servers with: FLEETFLOW_NATS_CA, else, inside a checkout whose
// local stack made one, its .fleetflow/tls/ca.pem. Empty means the system's roots.
func natsCA(g *globals) string {
	if g.cfg.NATSCA != "" || !strings.Contains(g.cfg.NATSURL, "tls://") {
		return g.cfg.NATSCA
	}
	if root, err := repoRoot(); err == nil {
		if ca := stack.LocalCAFile(root); regularFile(ca) {
			return ca
		}
	}
	return ""
}

// mqttCA is the CA file to verify the gateway with: --mqtt-ca (FLEETFLOW_MQTT_CA), else, for a TLS URL inside
// a checkout whose local stack made one, its .fleetflow/tls/ca.pem. Empty means the system's roots.
func mqttCA(g *globals) string {
	if g.cfg.MQTTCA != "" || !pki.IsTLSURL(g.cfg.MQTTURL) {
		return g.cfg.MQTTCA
	}
	if root, err := repoRoot(); err == nil {
		if ca := stack.LocalCAFile(root); regularFile(ca) {
			return ca
		}
	}
	return ""
}

// regularFile reports whether path is an existing regular file.
func regularFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

func newMethodCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "method", Short: "Call direct methods on devices",
		Long: `Call a direct method on one device and wait for its answer. For many devices, start a job:
fleetflow job start --method NAME --query QUERY.`,
		Example: `  fleetflow method invoke sensor-0042 ping
  fleetflow method invoke sensor-0042 diagnostics --timeout 10s`,
	}
	var payload string
	var timeout time.Duration
	var out *output
	invoke := &cobra.Command{
		Use:   "invoke ID NAME",
		Short: "Call a direct method on one online device and print its status and response",
		Long: `Call a direct method on one online device and print its response; the status and latency go to stderr.
The response is printed as JSON (-o yaml prints it as YAML). A device that answers with a status other than
2xx makes the exit code 3; an offline device or a timeout makes it 1.`,
		Example: `  fleetflow method invoke sensor-0042 ping
  fleetflow method invoke sensor-0042 setMode --payload '{"mode": "eco"}'
  fleetflow method invoke sensor-0042 upload --payload @request.json --timeout 2m`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, name := args[0], args[1]
			payload, err := argOrFile(payload)
			if err != nil {
				return usagef("--payload: %w", err)
			}
			if len(payload) > channel.MaxMethodPayload {
				return usagef("--payload is %d bytes; method payloads are limited to %d (128 KB)", len(payload), channel.MaxMethodPayload)
			}
			if payload != "" && !json.Valid([]byte(payload)) {
				return usagef("--payload is not valid JSON")
			}
			d, err := readDevice(cmd, g, id, (*registry.Registry).GetDevice)
			if err != nil {
				return err
			}
			if d.Status != fleet.StatusActive {
				return fmt.Errorf("device %s is %s: it cannot connect, so it cannot answer methods", id, d.Status)
			}
			ch, err := dialChannel(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer ch.Close()
			res, err := ch.Invoke(cmd.Context(), fleet.MethodCall{DeviceID: id, Method: name, Payload: []byte(payload)}, timeout)
			if err != nil {
				return fmt.Errorf("invoke %s on %s: %w", name, id, err)
			}
			// On the device's timeline (methods of jobs are there through the job).
			reg, err := openRegistry(cmd, g)
			if err == nil {
				_ = registry.RecordEvents(cmd.Context(), reg.Pool(), []registry.DeviceEvent{{DeviceID: id, Kind: registry.EventMethod,
					Detail: map[string]any{"method": name, "status": res.Status, "outcome": string(res.Outcome)}}})
				reg.Close()
			}
			switch res.Outcome {
			case fleet.MethodOffline:
				return fmt.Errorf("device offline: %s is not connected, so %s was not run", id, name)
			case fleet.MethodTimedOut:
				return fmt.Errorf("timeout: %s did not answer %s within %s", id, name, timeout)
			}
			fmt.Fprintf(os.Stderr, "status %d (%s)\n", res.Status, res.Latency.Round(time.Microsecond))
			var v any
			if json.Unmarshal(res.Payload, &v) == nil {
				// The response is a document in every format: text prints it as JSON.
				doc := out
				if doc.format == outText {
					doc = &output{format: outJSON}
				}
				if err := doc.print(stdout(cmd), v, nil); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(stdout(cmd), string(res.Payload))
			}
			if res.Outcome != fleet.MethodSucceeded {
				return partialf("%s answered %s with status %d", id, name, res.Status)
			}
			return nil
		},
	}
	invoke.Flags().StringVar(&payload, "payload", "", "JSON request body (at most 128 KB), or @FILE to read it from a file")
	invoke.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the answer")
	out = addOutputFlag(invoke)
	cmd.AddCommand(invoke)
	return cmd
}

// argOrFile returns s, or the contents of the file named after a leading @ (command lines cannot carry
// payloads near the 128 KB limit).
func argOrFile(s string) (string, error) {
	if !strings.HasPrefix(s, "@") {
		return s, nil
	}
	b, err := os.ReadFile(s[1:])
	if err != nil {
		return "", err
	}
	return string(b), nil
}
