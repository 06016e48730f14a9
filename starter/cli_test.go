package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// unreachableDB is a registry address nothing listens on, so that a test of usage errors fails fast (and
// visibly) if a command went as far as connecting.
const unreachableDB = "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1"

// runCLI runs the whole command tree in-process, as main does, and returns stdout, stderr and the exit code
// main would use.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"--database-url", unreachableDB, "--temporal-address", "127.0.0.1:1"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), exitCode(err), err
}

func TestExitCodeMapping(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"done", nil, 0},
		{"failed", errors.New("connect to temporal: refused"), 1},
		{"usage", usagef("give either --file or --count"), 2},
		{"usage, wrapped", fmt.Errorf("provision: %w", usagef("--count must be positive")), 2},
		{"query syntax", fmt.Errorf("--query: %w", &query.SyntaxError{Pos: 3, Msg: "expected FROM"}), 2},
		{"query semantics", &query.SemanticError{Msg: "unknown root"}, 2},
		{"per-device failures", partialf("job j: 3 of 10 devices did not succeed"), 3},
		{"per-device failures, wrapped", fmt.Errorf("x: %w", partialf("y")), 3},
		{"operator action waiting for a worker", &pendingError{"job j: pause is waiting for a worker"}, 4},
		{"interrupted", &interruptedError{"stopped waiting"}, 130},
		{"interrupted, wrapped", fmt.Errorf("x: %w", &interruptedError{"stopped waiting"}), 130},
		// Only the type decides: a message that merely mentions usage is a failure.
		{"message is not a type", errors.New("usage: invalid argument"), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, exitCode(tc.err))
		})
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	t.Setenv("FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT", "") // the developer's setting must not let the gateway case listen
	for _, tc := range []struct {
		name string
		args []string
		want string // in the error message
	}{
		{"unknown -o value", []string{"devices", "get", "d1", "-o", "xml"}, "text|json|yaml"},
		{"unknown -o value on a status", []string{"job", "status", "j1", "--output=table2"}, "text|json|yaml"},
		{"unknown -o value on report", []string{"report", "-o", "csv"}, "text|json|yaml"},
		{"unknown flag", []string{"devices", "get", "d1", "--colour"}, "unknown flag"},
		{"missing argument", []string{"devices", "get"}, "accepts 1 arg"},
		{"too many arguments", []string{"twin", "get", "a", "b"}, "accepts 1 arg"},
		{"unknown command", []string{"devcies"}, `unknown command "devcies"`},
		{"unknown subcommand", []string{"job", "strat"}, `unknown command "strat" for "fleetflow job"`},
		{"provision without a source", []string{"provision"}, "--file or --count"},
		{"provision with an unknown --auth", []string{"provision", "--count", "1", "--auth", "psk"}, "want secret or x509"},
		{"job without a query", []string{"job", "start", "--method", "ping"}, "--query or --group is required"},
		{"job with a query and a group", []string{"job", "start", "--method", "ping", "--query", "SELECT * FROM devices", "--group", "lab"}, "not both"},
		{"group with neither kind", []string{"group", "create", "lab"}, "--query QUERY (a dynamic group) or --static"},
		{"group with a bad name", []string{"group", "create", "Lab Rats", "--static"}, "group name"},
		{"scheme file missing", []string{"scheme", "set", "/nonexistent/scheme.json"}, "read scheme"},
		{"rollout without firmware", []string{"rollout", "plan", "--query", "SELECT * FROM devices"}, "--firmware is required"},
		{"purge without retention", []string{"purge"}, "--older-than"},
		{"job with a bad window", []string{"job", "start", "--query", "SELECT * FROM devices", "--method", "ping", "--window", "Sun 2-4"}, "--window"},
		{"job with a time zone and no window", []string{"job", "start", "--query", "SELECT * FROM devices", "--method", "ping", "--timezone", "UTC"}, "need --window"},
		{"config without a patch", []string{"config", "apply", "c1", "--target", "SELECT * FROM devices"}, "--set-desired JSON or --set-tags JSON"},
		{"config with a query and a group", []string{"config", "apply", "c1", "--target", "SELECT * FROM devices", "--group", "g", "--set-tags", `{"a":1}`}, "not both"},
		{"config with a bad metric", []string{"config", "apply", "c1", "--target", "SELECT * FROM devices", "--set-tags", `{"a":1}`, "--metric", "x"}, "NAME=QUERY"},
		{"config with a bad name", []string{"config", "apply", "C 1", "--target", "SELECT * FROM devices", "--set-tags", `{"a":1}`}, "configuration name"},
		{"retire with ids and a query", []string{"retire", "d1", "--query", "SELECT * FROM devices"}, "not both"},
		{"rotate with ids and a group", []string{"credentials", "rotate", "d1", "--group", "lab"}, "not both"},
		{"rotate with a query and a group", []string{"credentials", "rotate", "--query", "SELECT * FROM devices", "--group", "lab"}, "not both"},
		{"rotate with a bad group name", []string{"credentials", "rotate", "--group", "Lab Rats"}, "group name"},
		{"health rule with a query and a group", []string{"health", "rule", "set", "critical", "--query", "SELECT * FROM devices", "--group", "gw"}, "not both"},
		{"health rule with a bad name", []string{"health", "rule", "set", "Critical Gateways", "--group", "gw"}, "rule name"},
		{"health rule named like the fleet-wide check", []string{"health", "rule", "set", "fleet", "--group", "gw"}, "fleet-wide check"},
		{"health rule with a bad group name", []string{"health", "rule", "set", "critical", "--group", "Lab Rats"}, "group name"},
		{"health rule checked too often", []string{"health", "rule", "set", "critical", "--group", "gw", "--every", "1s"}, "at most every 10s"},
		{"health rule with a bad limit", []string{"health", "rule", "set", "critical", "--group", "gw", "--offline-after", "2x"}, "--offline-after"},
		{"health run of a rule with limits", []string{"health", "run", "--rule", "critical", "--offline-after", "1m"}, "the rule's limits apply"},
		{"health rule show with a bad name", []string{"health", "rule", "show", "A B"}, "rule name"},
		{"health rule delete without a name", []string{"health", "rule", "delete"}, "accepts 1 arg"},
		{"credentials status --failed without a rotation", []string{"credentials", "status", "--failed"}, "give its id"},
		{"credentials status with two ids", []string{"credentials", "status", "a", "b"}, "accepts at most 1 arg"},
		{"retire with too many ids", append([]string{"retire"}, deviceIDs(maxRetireIDs+1)...), "at most 10,000 on the command line"},
		{"abort without a decision", []string{"rollout", "abort", "rollout-1.0.0-1"}, "--rollback or --no-rollback"},
		{"bad method payload", []string{"method", "invoke", "d1", "ping", "--payload", "{"}, "not valid JSON"},
		{"unknown completion shell", []string{"completion", "tcsh"}, "unknown command"},
		// Refused before anything listens (nor connects), so the test never binds beyond loopback.
		{"plaintext gateway on the network", []string{"gateway", "--listen", "0.0.0.0:1883", "--metrics-listen", ""}, "--allow-plaintext"},
		{"gateway certificate without key", []string{"gateway", "--tls-cert", "server.pem", "--metrics-listen", ""}, "needs its key"},
		{"gateway device CA without TLS", []string{"gateway", "--device-ca", "ca.pem", "--tls-cert", "", "--tls-key", "", "--metrics-listen", ""}, "--device-ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, code, err := runCLI(t, tc.args...)
			require.Error(t, err)
			require.Equal(t, exitUsage, code, "%v", err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// deviceIDs returns n distinct device ids.
func deviceIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%06d", i)
	}
	return ids
}

// The cap on retire's ids refuses one id more than it allows, and no fewer: the full allowance gets past
// the check (to the backends, which unreachableDB makes fail as an ordinary error, exit 1).
func TestRetireTakesUpToTheCapOfIDs(t *testing.T) {
	_, _, code, err := runCLI(t, append([]string{"retire", "--detach"}, deviceIDs(maxRetireIDs)...)...)
	require.Error(t, err)
	require.NotContains(t, err.Error(), "on the command line")
	require.Equal(t, exitFailed, code, "%v", err)

	_, _, code, err = runCLI(t, append([]string{"retire", "--detach"}, deviceIDs(maxRetireIDs+1)...)...)
	require.Equal(t, exitUsage, code, "%v", err)
	require.ErrorContains(t, err, "10,001 device ids: at most 10,000 on the command line")
	require.ErrorContains(t, err, "--query")
}

// The cap keeps the workflow's input under Temporal's 2 MB payload limit even when every id has the
// longest form the protocol allows (64 characters), with room for the rest of the input.
func TestRetireCapFitsInAPayload(t *testing.T) {
	ids := make([]string, maxRetireIDs)
	for i := range ids {
		ids[i] = fmt.Sprintf("%064d", i)
	}
	in := workflows.JobInput{JobID: "decommission-20261206-051500.000", Kind: fleet.JobRetire, Query: "ids: " + strings.Join(ids, " "), IDs: ids,
		Spec: []byte(`{"reason":"end of life","wipe":true}`), Reason: "end of life"}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	require.Less(t, len(b), 3*(2<<20)/4, "the largest input leaves a quarter of the 2 MB limit free")
}

func TestOutputFlagAcceptsItsValues(t *testing.T) {
	for _, v := range []string{"text", "json", "yaml", "JSON", "table"} {
		o := &output{format: outText}
		require.NoError(t, o.Set(v), v)
	}
	o := &output{format: outText}
	err := o.Set("xml")
	require.ErrorContains(t, err, "text|json|yaml")
	require.Equal(t, outText, o.format, "a refused value changes nothing")
}

// YAML is made from the JSON encoding: the field names are the json tags in both formats.
func TestPrinterUsesTheSameFieldNamesInJSONAndYAML(t *testing.T) {
	type inner struct {
		DeviceID string `json:"deviceId"`
	}
	v := struct {
		WorkflowID string    `json:"workflowId"`
		Devices    []inner   `json:"devices"`
		Skipped    string    `json:"-"`
		At         time.Time `json:"at"`
	}{"op-1", []inner{{"d1"}}, "hidden", time.Date(2026, 11, 27, 10, 15, 0, 0, time.UTC)}

	var j, y bytes.Buffer
	require.NoError(t, (&output{format: outJSON}).print(&j, v, nil))
	require.NoError(t, (&output{format: outYAML}).print(&y, v, nil))
	require.Contains(t, j.String(), "\n  \"workflowId\": \"op-1\"", "indented JSON")
	require.Contains(t, y.String(), "workflowId: op-1")
	require.Contains(t, y.String(), "- deviceId: d1")
	require.NotContains(t, y.String(), "hidden")
	var fromJSON, fromYAML map[string]any
	require.NoError(t, json.Unmarshal(j.Bytes(), &fromJSON))
	require.NoError(t, yaml.Unmarshal(y.Bytes(), &fromYAML))
	require.Equal(t, fromJSON, fromYAML)

	called := false
	require.NoError(t, (&output{format: outText}).print(&j, v, func() error { called = true; return nil }))
	require.True(t, called, "text calls the command's own printer")
}

func TestCompletionOfOutputValues(t *testing.T) {
	for _, args := range [][]string{
		{"__complete", "devices", "get", "d1", "-o", ""},
		{"__complete", "rollout", "status", "rollout-1", "--output", ""},
		{"__complete", "provision", "-o", ""},
	} {
		out, _, code, err := runCLI(t, args...)
		require.NoError(t, err)
		require.Equal(t, 0, code)
		require.Equal(t, []string{"text", "json", "yaml"}, candidates(out), "%v", args)
	}
}

// With the registry unreachable, a completion offers nothing and fails nothing: whatever it printed would
// land in the operator's shell.
func TestCompletionWithoutARegistryOffersNothing(t *testing.T) {
	start := time.Now()
	out, stderr, code, err := runCLI(t, "__complete", "devices", "get", "")
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.Empty(t, candidates(out))
	// cobra's own debug line (shells discard it) is all there is: no error from the registry read.
	require.Equal(t, "Completion ended with directive: ShellCompDirectiveNoFileComp", strings.TrimSpace(stderr))
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestCompletionOfRegistryIDs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := testenv.Postgres(t)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	defer reg.Close()
	_, err = reg.Pool().Exec(ctx, `
		INSERT INTO devices (id, status) VALUES ('cmp-a1', 'active'), ('cmp-a2', 'disabled'), ('cmp-b1', 'active'),
		  ('cmp-a3', 'retired'), ('cmp_x', 'active');
		INSERT INTO firmware (version, url, sha256) VALUES ('9.1.0', 'https://fw.example/9.1.0', repeat('ab', 32)),
		  ('9.2.0', 'https://fw.example/9.2.0', repeat('cd', 32));
		INSERT INTO jobs (id, kind, query, spec, created_at) VALUES
		  ('job-method-ping-1', 'method', 'SELECT * FROM devices', '{}', now() - interval '1 hour'),
		  ('job-method-ping-2', 'method', 'SELECT * FROM devices', '{}', now());
		INSERT INTO rollouts (id, version, query, spec) VALUES ('rollout-9.1.0-1', '9.1.0', 'SELECT * FROM devices', '{}')`)
	require.NoError(t, err)

	complete := func(args ...string) []string {
		t.Helper()
		root := newRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&bytes.Buffer{})
		root.SetArgs(append([]string{"__complete", "--database-url", url}, args...))
		require.NoError(t, root.ExecuteContext(ctx))
		return candidates(out.String())
	}
	require.Equal(t, []string{"cmp-a1", "cmp-a2"}, complete("devices", "get", "cmp-a"), "retired devices are left out")
	require.Equal(t, []string{"cmp_x"}, complete("twin", "get", "cmp_"), "_ matches itself, not any character")
	require.Empty(t, complete("devices", "get", "cmp-a1", "cmp-"), "get takes one id")
	require.Equal(t, []string{"cmp-a1", "cmp-a2"}, complete("retire", "cmp-b1", "cmp-a"), "retire takes many")
	require.ElementsMatch(t, []string{"9.1.0", "9.2.0"}, complete("rollout", "plan", "--firmware", "9."))
	require.Equal(t, []string{"job-method-ping-2", "job-method-ping-1"}, complete("job", "status", "job-"), "newest first")
	require.Equal(t, []string{"job-method-ping-1"}, complete("job", "cancel", "job-method-ping-1"))
	require.Equal(t, []string{"rollout-9.1.0-1"}, complete("rollout", "status", "roll"))
	require.Equal(t, []string{"rollout-9.1.0-1"}, complete("rollout", "abort", ""))
}

// Every command that prints a result takes -o; the exceptions print a stream (servers, the simulator),
// manage the local stack's processes, or are cobra's own.
func TestEveryPrintingCommandTakesOutput(t *testing.T) {
	streams := map[string]bool{
		"fleetflow gateway": true, "fleetflow simulate": true, "fleetflow dev up": true, "fleetflow dev down": true,
		"fleetflow dev simulate": true, "fleetflow help": true,
		"fleetflow nats-node": true,
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		path := c.CommandPath()
		if !c.Runnable() || c.HasSubCommands() || streams[path] || strings.HasPrefix(path, "fleetflow completion") {
			return
		}
		f := c.Flags().Lookup("output")
		require.NotNil(t, f, "%s has no -o", path)
		require.Equal(t, "o", f.Shorthand, path)
		require.Equal(t, "text", f.DefValue, path)
		_, hasCompletion := c.GetFlagCompletionFunc("output")
		require.True(t, hasCompletion, "%s completes -o", path)
	}
	walk(newRoot())
}

// candidates parses `__complete` output: one candidate a line, then ":<directive>".
func candidates(out string) []string {
	var c []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" || strings.HasPrefix(l, ":") {
			continue
		}
		c = append(c, strings.SplitN(l, "\t", 2)[0])
	}
	return c
}

// Every command documents itself with a description and examples, and `fleetflow --help` lists every
// top-level command under a lifecycle group.
func TestEveryCommandHasLongExampleAndGroup(t *testing.T) {
	root := newRoot()
	groups := map[string]bool{}
	for _, g := range root.Groups() {
		groups[g.ID] = true
	}
	for _, id := range []string{groupPlan, groupProvision, groupConfigure, groupMonitor, groupRetire, groupStack, groupOther} {
		require.True(t, groups[id], "group %s", id)
	}
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" && c.Parent() != root {
			return
		}
		n++
		require.NotEmpty(t, strings.TrimSpace(c.Long), "%s has no Long description", c.CommandPath())
		require.NotEmpty(t, strings.TrimSpace(c.Example), "%s has no Example", c.CommandPath())
		if c.Parent() == root {
			require.True(t, groups[c.GroupID], "%s is in no help group", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	require.Greater(t, n, 40, "the walk saw the whole tree")

	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"--help"})
	require.NoError(t, root.Execute())
	for _, title := range []string{"Plan", "Provision:", "Configure", "Monitor:", "Retire:", "Local stack:"} {
		require.Contains(t, out.String(), title)
	}
}
