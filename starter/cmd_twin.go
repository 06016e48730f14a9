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
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/twin"
)

func newTwinCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "twin", Short: "Read and write device twins"}
	var output string
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a device's twin: tags, desired vs reported (with the keys not yet acknowledged), versions and etag",
		Args:  cobra.ExactArgs(1),
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
			if output == "json" {
				if d.Replaces == "" && d.ReplacedBy == "" {
					return printJSON(t)
				}
				return printJSON(struct {
					twin.Twin
					Replaces   string `json:"replaces,omitempty"`
					ReplacedBy string `json:"replacedBy,omitempty"`
				}{t, d.Replaces, d.ReplacedBy})
			}
			return printTwin(t, d)
		},
	}
	get.Flags().StringVarP(&output, "output", "o", "text", "text, or json for the whole twin in Azure's shape")
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
	name, what := "set-tags", "tags"
	if section == twin.Desired {
		name, what = "set-desired", "desired properties"
	}
	cmd := &cobra.Command{
		Use:   name + " ID --patch JSON",
		Short: "Merge a JSON merge patch (RFC 7386) into a device's " + what,
		Long: "Merge a JSON merge patch (RFC 7386; null deletes a key) into a device's " + what + ".\n" +
			"With --if-match the write happens only if the twin's etag is still ETAG (optimistic concurrency)." +
			map[bool]string{true: "\nAn online device gets the patch at once; an offline one gets the whole desired document when it reconnects.", false: ""}[section == twin.Desired],
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if patch == "" {
				return errors.New("--patch is required, e.g. --patch '{\"telemetryInterval\": 30}'")
			}
			if _, err := twin.ParseObject(section, []byte(patch)); err != nil {
				return fmt.Errorf("--patch: %w", err)
			}
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			t, err := reg.UpdateTwin(cmd.Context(), id, section, []byte(patch), ifMatch)
			switch {
			case errors.Is(err, registry.ErrNotFound):
				return fmt.Errorf("no device %q in the registry", id)
			case errors.Is(err, registry.ErrPreconditionFailed):
				return fmt.Errorf("not written: %w; read the twin again and retry with --if-match %s", err, t.ETag)
			case err != nil:
				return err
			}
			fmt.Printf("%s: %s updated, etag %s\n", id, what, t.ETag)
			if section != twin.Desired {
				return nil
			}
			fmt.Printf("desired version %d\n", t.Properties.Desired.Version)
			if t.ConnectionState != "connected" {
				fmt.Println("device offline: it gets the desired state when it reconnects")
				return nil
			}
			ch, err := dialChannel(cmd.Context(), g)
			if err != nil {
				fmt.Fprintf(os.Stderr, "warning: could not push the patch (%v); the device gets it on its next reconnect\n", err)
				return nil
			}
			defer ch.Close()
			if _, err := ch.PublishDesired(cmd.Context(), []channel.DesiredMessage{{DeviceID: id, Version: t.Properties.Desired.Version,
				Patch: []byte(patch)}}); err != nil {
				fmt.Fprintf(os.Stderr, "warning: push failed (%v); the device gets it on its next reconnect\n", err)
				return nil
			}
			fmt.Println("pushed to the device")
			return nil
		},
	}
	cmd.Flags().StringVar(&patch, "patch", "", "JSON merge patch")
	cmd.Flags().StringVar(&ifMatch, "if-match", "", "write only if the twin's etag is this (from `twin get`)")
	return cmd
}

// dialChannel connects the CLI to the gateway as a fleetflow service.
func dialChannel(ctx context.Context, g *globals) (*channel.Channel, error) {
	tok := os.Getenv("FLEETFLOW_SERVICE_TOKEN")
	if tok == "" {
		root, err := repoRoot()
		if err != nil {
			return nil, errors.New("FLEETFLOW_SERVICE_TOKEN is not set and no checkout with a .fleetflow/service-token was found")
		}
		if tok, err = stack.ServiceToken(root); err != nil {
			return nil, err
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch, err := channel.Dial(dctx, channel.Config{BrokerURL: g.cfg.MQTTURL, Token: tok})
	if err != nil {
		return nil, fmt.Errorf("connect to the gateway at %s: %w (is the stack up? run `make up` or set FLEETFLOW_MQTT_URL)", g.cfg.MQTTURL, err)
	}
	return ch, nil
}

func newMethodCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "method", Short: "Call direct methods on devices"}
	var payload string
	var timeout time.Duration
	invoke := &cobra.Command{
		Use:   "invoke ID NAME",
		Short: "Call a direct method on one online device and print its status and response",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, name := args[0], args[1]
			payload, err := argOrFile(payload)
			if err != nil {
				return fmt.Errorf("--payload: %w", err)
			}
			if len(payload) > channel.MaxMethodPayload {
				return fmt.Errorf("--payload is %d bytes; method payloads are limited to %d (128 KB)", len(payload), channel.MaxMethodPayload)
			}
			if payload != "" && !json.Valid([]byte(payload)) {
				return errors.New("--payload is not valid JSON")
			}
			d, err := readDevice(cmd, g, id, (*registry.Registry).GetDevice)
			if err != nil {
				return err
			}
			if d.Status != registry.StatusActive {
				return fmt.Errorf("device %s is %s: it cannot connect, so it cannot answer methods", id, d.Status)
			}
			ch, err := dialChannel(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer ch.Close()
			res, err := ch.Invoke(cmd.Context(), channel.MethodCall{DeviceID: id, Method: name, Payload: []byte(payload)}, timeout)
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
			case channel.Offline:
				return fmt.Errorf("device offline: %s is not connected, so %s was not run", id, name)
			case channel.TimedOut:
				return fmt.Errorf("timeout: %s did not answer %s within %s", id, name, timeout)
			}
			fmt.Fprintf(os.Stderr, "status %d (%s)\n", res.Status, res.Latency.Round(time.Microsecond))
			var v any
			if json.Unmarshal(res.Payload, &v) == nil {
				if err := printJSON(v); err != nil {
					return err
				}
			} else {
				fmt.Println(string(res.Payload))
			}
			if res.Outcome != channel.Succeeded {
				return &exitError{code: 3, err: fmt.Errorf("%s answered %s with status %d", id, name, res.Status)}
			}
			return nil
		},
	}
	invoke.Flags().StringVar(&payload, "payload", "", "JSON request body (at most 128 KB), or @FILE to read it from a file")
	invoke.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the answer")
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
