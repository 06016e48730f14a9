package main

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/manifest"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

const floorScheme = `{"type":"object","properties":{"region":{"enum":["eu","us"]},"floor":{"type":"integer"}},"required":["region"]}`

// A manifest row whose tags violate the scheme is reported by line with the path and the rule, gets no
// credential, and the rest are provisioned.
func TestProvisioningRefusesRowsThatViolateTheScheme(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	end := registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floorScheme), nil, false, 100)
	require.Equal(t, fleet.SchemeActive, end.State)

	out := filepath.Join(t.TempDir(), "creds.ndjson")
	nd := `{"id":"s-1","tags":{"region":"eu","floor":1}}
{"id":"s-2","tags":{"region":"eu","floor":"3"}}
{"id":"s-3","tags":{"region":"us"}}
{"id":"s-4","tags":{"floor":2}}
`
	r, err := manifest.NewReader(bufio.NewReader(strings.NewReader(nd)), manifest.NDJSON)
	require.NoError(t, err)
	rows, err := stageManifest(ctx, reg, "provision-s", r, out+".pending", newSecretCredential, 2, 0, nil)
	require.NoError(t, err)
	require.Equal(t, int64(4), rows)
	pending, err := creds.ReadFile(out + ".pending")
	require.NoError(t, err)
	var ids []string
	for _, c := range pending {
		ids = append(ids, c.ID)
	}
	require.Equal(t, []string{"s-1", "s-3"}, ids, "rows the scheme refuses never get a credential")
	c, err := reg.ProvisionBatch(ctx, "provision-s", 0, rows, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Invalid: 2}, c)
	issues, err := reg.ProvisionResults(ctx, "provision-s", "invalid", 10)
	require.NoError(t, err)
	require.Equal(t, []fleet.RowResult{
		{Line: 2, ID: "s-2", Outcome: fleet.RowInvalid, Reason: "tags.floor: got string, want integer"},
		{Line: 4, ID: "s-4", Outcome: fleet.RowInvalid, Reason: "tags: missing property 'region'"},
	}, issues)
	kept, err := finalizeCreds(ctx, reg, "provision-s", out+".pending", out)
	require.NoError(t, err)
	require.Equal(t, 2, kept)
	_, err = os.Stat(out)
	require.NoError(t, err)
}

// Bad input around schemes and groups is refused with exit 2 and a message that says what is wrong.
func TestSchemeAndGroupBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := testenv.Postgres(t)
	reg, err := registry.Open(ctx, dbURL)
	require.NoError(t, err)
	defer reg.Close()
	registrytest.Provision(t, reg, "g", 3)
	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(`{"type":"object","properties":{"floor":{"type":"integer"}}}`), nil, false, 100)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	cli := func(args ...string) (string, int, error) {
		return runCLIAt(t, dbURL, "127.0.0.1:1", args...)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a schema file that is not JSON", []string{"scheme", "set", write("bad.json", "{not json")}, "not JSON"},
		{"a schema of another draft", []string{"scheme", "set", write("d7.json", `{"$schema":"http://json-schema.org/draft-07/schema#"}`)}, "only draft 2020-12"},
		{"a schema with an unknown type", []string{"scheme", "set", write("t.json", `{"properties":{"a":{"type":"nosuch"}}}`)}, "invalid scheme"},
		{"a schema that reads a file", []string{"scheme", "set", write("ref.json", `{"properties":{"a":{"$ref":"file:///etc/passwd"}}}`)}, "may only $ref inside itself"},
		{"an unknown group", []string{"job", "start", "--group", "nope", "--method", "ping"}, `no group "nope"`},
		{"an unknown group in a query", []string{"devices", "query", "SELECT * FROM devices WHERE IN_GROUP('nope')"}, "unknown group 'nope'"},
		{"showing an unknown group", []string{"group", "show", "nope"}, `no group "nope"`},
		{"adding an unknown device", []string{"group", "add", "lab", "g-00", "ghost-1"}, "ghost-1"},
		{"a tags patch that breaks the scheme", []string{"twin", "set-tags", "g-01", "--patch", `{"floor":"3"}`}, "tags.floor: got string, want integer"},
		{"a tag job that breaks the scheme", []string{"job", "start", "--query", "SELECT * FROM devices", "--set-tags", `{"floor":"3"}`}, "--set-tags: tags.floor: got string, want integer"},
		{"a dynamic group that names itself", []string{"group", "create", "loop", "--query", "SELECT * FROM devices WHERE IN_GROUP('loop')"}, "names itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "adding an unknown device" {
				_, code, err := cli("group", "create", "lab", "--static")
				require.NoError(t, err)
				require.Equal(t, exitOK, code)
			}
			_, code, err := cli(tc.args...)
			require.Error(t, err)
			require.Equal(t, exitUsage, code, "%v", err)
			require.Contains(t, err.Error(), tc.want)
		})
	}

	// Deleting a group a running job uses is refused, naming the job; once the job has ended it is not.
	_, code, err := cli("group", "create", "eu", "--query", "SELECT * FROM devices WHERE deviceId >= 'g-01'")
	require.NoError(t, err)
	require.Equal(t, exitOK, code)
	_, err = reg.CreateJob(ctx, fleet.NewJob{ID: "job-1", Kind: fleet.JobSetTags, Query: fleet.GroupQuery("eu"), Spec: []byte(`{}`)})
	require.NoError(t, err)
	_, code, err = cli("group", "delete", "eu")
	require.Equal(t, exitUsage, code, "%v", err)
	require.ErrorContains(t, err, "in use by a running operation: job job-1")
	out, code, err := cli("group", "list")
	require.NoError(t, err)
	require.Equal(t, exitOK, code)
	require.Regexp(t, `eu\s+dynamic\s+2\s`, out)
	require.NoError(t, reg.CloseJob(ctx, "job-1", fleet.JobCompleted))
	_, code, err = cli("group", "delete", "eu")
	require.NoError(t, err)
	require.Equal(t, exitOK, code)
}

// Completion offers group names for --group and the scheme's tag paths inside a --query value.
func TestCompletionOfGroupsAndTagPaths(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := testenv.Postgres(t)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	defer reg.Close()
	require.NoError(t, reg.CreateGroup(ctx, "lab-a", ""))
	require.NoError(t, reg.CreateGroup(ctx, "lab-b", "SELECT * FROM devices WHERE tags.floor = 1"))
	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floorScheme), nil, false, 100)
	complete := func(args ...string) []string {
		t.Helper()
		root := newRoot()
		var out strings.Builder
		root.SetOut(&out)
		root.SetErr(&strings.Builder{})
		root.SetArgs(append([]string{"__complete", "--database-url", url}, args...))
		require.NoError(t, root.ExecuteContext(ctx))
		return candidates(out.String())
	}
	require.Equal(t, []string{"lab-a", "lab-b"}, complete("job", "start", "--group", "lab"))
	require.Equal(t, []string{"lab-b"}, complete("group", "show", "lab-b"))
	require.Equal(t, []string{"SELECT * FROM devices WHERE tags.floor"},
		complete("job", "start", "--query", "SELECT * FROM devices WHERE tags.fl"))
	require.Equal(t, []string{"SELECT * FROM devices WHERE tags.floor", "SELECT * FROM devices WHERE tags.region"},
		complete("rollout", "plan", "--query", "SELECT * FROM devices WHERE t"))
	require.Equal(t, []string{"SELECT * FROM devices WHERE (tags.region"},
		complete("devices", "query", "SELECT * FROM devices WHERE (tags.r"))
}

// A CSV manifest's cells take the types the scheme declares for their columns: a CSV cell has none.
func TestCSVCellsTakeTheSchemesTypes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	registrytest.SetScheme(t, reg, "scheme-set-1", []byte(floorScheme), nil, false, 100)
	out := filepath.Join(t.TempDir(), "creds.ndjson")
	r, err := manifest.NewReader(bufio.NewReader(strings.NewReader("id,region,floor\nc-1,eu,3\nc-2,us,third\n")), manifest.CSV)
	require.NoError(t, err)
	rows, err := stageManifest(ctx, reg, "provision-c", r, out+".pending", newSecretCredential, 1, 0, nil)
	require.NoError(t, err)
	c, err := reg.ProvisionBatch(ctx, "provision-c", 0, rows, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Invalid: 1}, c)
	tw, err := reg.GetTwin(ctx, "c-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"region":"eu","floor":3}`, string(tw.Tags))
	issues, err := reg.ProvisionResults(ctx, "provision-c", "invalid", 10)
	require.NoError(t, err)
	require.Len(t, issues, 1)
	require.Equal(t, "tags.floor: got string, want integer", issues[0].Reason)
}

// A scheme that declares the window tags with fleetflow's formats refuses manifest rows whose window or time
// zone the parser does not accept, by line with the path and the rule.
func TestProvisioningRefusesBadMaintenanceWindows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	end := registrytest.SetScheme(t, reg, "scheme-set-1", []byte(`{"type": "object", "properties": {
		"maintenance": {"type": "string", "format": "maintenance-window"},
		"timezone": {"type": "string", "format": "timezone"}}}`), nil, false, 100)
	require.Equal(t, fleet.SchemeActive, end.State)

	out := filepath.Join(t.TempDir(), "creds.ndjson")
	nd := `{"id":"w-1","tags":{"maintenance":"Sun 02:00-04:00","timezone":"Europe/Berlin"}}
{"id":"w-2","tags":{"maintenance":"Sun 2-4"}}
{"id":"w-3","tags":{"maintenance":"daily 01:00-02:00","timezone":"Europe/Berlim"}}
`
	r, err := manifest.NewReader(bufio.NewReader(strings.NewReader(nd)), manifest.NDJSON)
	require.NoError(t, err)
	rows, err := stageManifest(ctx, reg, "provision-w", r, out+".pending", newSecretCredential, 2, 0, nil)
	require.NoError(t, err)
	c, err := reg.ProvisionBatch(ctx, "provision-w", 0, rows, 0)
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 1, Invalid: 2}, c)
	issues, err := reg.ProvisionResults(ctx, "provision-w", "invalid", 10)
	require.NoError(t, err)
	require.Len(t, issues, 2)
	require.Equal(t, "w-2", issues[0].ID)
	require.Contains(t, issues[0].Reason, "tags.maintenance: ")
	require.Contains(t, issues[0].Reason, "want HH:MM")
	require.Equal(t, "w-3", issues[1].ID)
	require.Contains(t, issues[1].Reason, "tags.timezone: ")
	require.Contains(t, issues[1].Reason, `unknown time zone "Europe/Berlim"`)
}
