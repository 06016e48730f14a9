package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// The main path: provision 200 devices, the simulator connects all of them with their credentials
// while the workflow waits, and their reported capabilities are queryable.
func TestProvisionConnectReportAndQuery(t *testing.T) {
	e := newEnv(t)
	e.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	credsFile := filepath.Join(t.TempDir(), "creds.ndjson")

	done := e.cliAsync(ctx, "provision", "--count", "200", "--prefix", "e2e-", "--tags", "region=eu,site=ber-1",
		"--creds-out", credsFile, "--await-connect", "2m", "--batch-size", "50", "--output", "json")
	waitFile(t, credsFile, time.Minute)
	st, err := os.Stat(credsFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "credentials are secrets")
	cs, err := creds.ReadFile(credsFile)
	require.NoError(t, err)
	require.Len(t, cs, 200)

	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	simDone := make(chan error, 1)
	go func() {
		_, err := simulator.Run(simCtx, simulator.Config{BrokerURL: e.mqttURL, Creds: cs})
		simDone <- err
	}()

	r := <-done
	require.NoError(t, r.err)
	s := parseSummary(t, r.out)
	require.True(t, strings.HasPrefix(s.WorkflowID, "provision-e2e-200-"), s.WorkflowID)
	require.Equal(t, int64(200), s.Counts.Created)
	require.Zero(t, s.Counts.Invalid)
	require.Equal(t, 200, s.Credentials)
	require.NotNil(t, s.Connect)
	require.Equal(t, int64(200), s.Connect.Reported, "the workflow waited for every device")
	require.Equal(t, int64(200), s.Connect.Connected)

	// Every device's capabilities are in the registry and match what it reported.
	res, err := e.reg.Query(ctx, "SELECT properties.reported.model, COUNT() AS n FROM devices WHERE tags.region = 'eu' GROUP BY properties.reported.model", query.Options{})
	require.NoError(t, err)
	var total int64
	want := map[string]int64{}
	for _, c := range cs {
		want[simulator.Capabilities(c.ID, 0)["model"].(string)]++
	}
	got := map[string]int64{}
	for _, row := range res.Rows {
		got[fmt.Sprint(row[0])] = row[1].(int64)
		total += row[1].(int64)
	}
	require.Equal(t, int64(200), total)
	require.Equal(t, want, got)

	tw, err := e.reg.GetTwin(ctx, "e2e-0042")
	require.NoError(t, err)
	require.Equal(t, "connected", tw.ConnectionState)
	var reported map[string]any
	require.NoError(t, json.Unmarshal(tw.Properties.Reported.Doc, &reported))
	require.Equal(t, simulator.Capabilities("e2e-0042", 0)["model"], reported["model"])
	require.Contains(t, reported, "firmware")
	require.Contains(t, reported, "sensors")

	// Secrets never reach Temporal: the workflow's whole history holds no secret.
	hist := e.tc.GetWorkflowHistory(ctx, s.WorkflowID, "", false, 0)
	var events strings.Builder
	for hist.HasNext() {
		ev, err := hist.Next()
		require.NoError(t, err)
		events.WriteString(ev.String())
	}
	require.NotEmpty(t, events.String())
	for _, c := range cs[:20] {
		require.NotContains(t, events.String(), c.Secret)
	}

	// devices get and query as JSON, the way scripts read them.
	out, err := e.cli(ctx, "devices", "query", "-o", "json", "SELECT deviceId, properties.reported.model AS model FROM devices WHERE deviceId = 'e2e-0042'")
	require.NoError(t, err)
	var rows []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &rows))
	require.Equal(t, []map[string]any{{"deviceId": "e2e-0042", "model": reported["model"]}}, rows)
	_, err = e.cli(ctx, "devices", "query", "SELECT * FROM devices WHERE tags.region = ")
	require.Error(t, err, "a syntax error fails the command")

	stopSim()
	require.NoError(t, <-simDone)
}

// A manifest with bad rows: each is reported with its line and reason, the good rows are provisioned, and a
// second run of the same manifest leaves the existing devices and their credentials alone.
func TestBadManifestRowsAreReportedAndTheRestProvisioned(t *testing.T) {
	e := newEnv(t)
	e.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	manifest := filepath.Join(dir, "fleet.csv")
	require.NoError(t, os.WriteFile(manifest, []byte(strings.Join([]string{
		"id,region,site",
		"good-1,eu,ber-1",
		"Bad Id,eu,ber-1",
		"good-2,us",
		"good-3,us,nyc-1",
		"good-1,eu,dup",
		"good-4,apac,sin-1",
	}, "\n")+"\n"), 0o644))
	credsFile := filepath.Join(dir, "creds.ndjson")
	// Invalid rows are invalid input: the good rows are provisioned, then the CLI exits 2.
	out, err := e.cli(ctx, "provision", "--file", manifest, "--creds-out", credsFile, "-o", "json")
	require.Equal(t, 2, exitCodeOf(err), "%v", err)
	s := parseSummary(t, out)
	require.Equal(t, int64(6), s.Rows)
	require.Equal(t, int64(3), s.Counts.Created)
	require.Equal(t, int64(3), s.Counts.Invalid)
	lines := map[int64]string{}
	for _, is := range s.Invalid {
		lines[is.Line] = is.Reason
	}
	require.Contains(t, lines[3], "invalid device id")
	require.Contains(t, lines[4], "expected 3 fields")
	require.Contains(t, lines[6], "duplicate id")
	cs, err := creds.ReadFile(credsFile)
	require.NoError(t, err)
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	require.ElementsMatch(t, []string{"good-1", "good-3", "good-4"}, ids, "only created devices get credentials")
	tw, err := e.reg.GetTwin(ctx, "good-3")
	require.NoError(t, err)
	require.JSONEq(t, `{"region":"us","site":"nyc-1"}`, string(tw.Tags))

	// The same manifest again: nothing new, the old secrets still work.
	credsAgain := filepath.Join(dir, "creds-again.ndjson")
	out, err = e.cli(ctx, "provision", "--file", manifest, "--creds-out", credsAgain, "-o", "json")
	require.Equal(t, 2, exitCodeOf(err), "the same invalid rows again: %v", err)
	s = parseSummary(t, out)
	require.Equal(t, int64(0), s.Counts.Created)
	require.Equal(t, int64(3), s.Counts.Existing)
	again, err := creds.ReadFile(credsAgain)
	require.NoError(t, err)
	require.Empty(t, again)
	for _, c := range cs {
		a, err := e.reg.DeviceAuth(ctx, c.ID)
		require.NoError(t, err)
		require.True(t, creds.Matches(c.Secret, a.Secret1Hash), "%s keeps its first secret", c.ID)
	}

	// A manifest without an id column is refused before anything is staged.
	bad := filepath.Join(dir, "bad.csv")
	require.NoError(t, os.WriteFile(bad, []byte("name,region\nx,eu\n"), 0o644))
	_, err = e.cli(ctx, "provision", "--file", bad)
	require.Error(t, err)
}

// Killing the worker in the middle of a provisioning run and starting another finishes with exactly the
// right devices: batches are transactions recorded with their counts, so a retried batch changes nothing.
func TestWorkerCrashDuringProvisioningLosesAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const rows = 40000
	w1 := e.workerProcess()
	credsFile := filepath.Join(t.TempDir(), "creds.ndjson")
	done := e.cliAsync(ctx, "provision", "--count", fmt.Sprint(rows), "--prefix", "crash-", "--creds-out", credsFile,
		"--batch-size", "500", "--window", "2", "--heartbeat-timeout", "3s", "-o", "json")
	// Kill the worker once some, but not all, batches have committed.
	require.Eventually(t, func() bool {
		var n int64
		err := e.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices").Scan(&n)
		return err == nil && n >= 2000
	}, 2*time.Minute, 20*time.Millisecond)
	require.NoError(t, w1.Process.Signal(syscall.SIGKILL))
	_, _ = w1.Process.Wait()
	var mid int64
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices").Scan(&mid))
	require.Less(t, mid, int64(rows), "the worker was killed mid-run")
	e.workerProcess()

	r := <-done
	require.NoError(t, r.err)
	s := parseSummary(t, r.out)
	require.Equal(t, int64(rows), s.Counts.Created)
	require.Zero(t, s.Counts.Existing)
	require.Zero(t, s.Counts.Invalid)
	var n, distinct int64
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT count(*), count(DISTINCT id) FROM devices WHERE provisioned_by = $1",
		s.WorkflowID).Scan(&n, &distinct))
	require.Equal(t, int64(rows), n)
	require.Equal(t, int64(rows), distinct)
	cs, err := creds.ReadFile(credsFile)
	require.NoError(t, err)
	require.Len(t, cs, rows)
	a, err := e.reg.DeviceAuth(ctx, cs[rows-1].ID)
	require.NoError(t, err)
	require.True(t, creds.Matches(cs[rows-1].Secret, a.Secret1Hash))
}

// Interrupting the CLI while the workflow runs loses no secret: they wait in the pending file, and
// --resume writes the credentials file once the workflow has created the devices.
func TestInterruptedProvisioningResumesWithItsCredentials(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	credsFile := filepath.Join(dir, "creds.ndjson")
	// No worker yet: the workflow cannot make progress, so the CLI is interrupted mid-run.
	cmd := exec.CommandContext(ctx, bins.cli, "provision", "--count", "50", "--prefix", "intr-", "--creds-out", credsFile)
	cmd.Env = e.environ()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "started provision-") }, time.Minute, 50*time.Millisecond)
	op := regexp.MustCompile(`provision-intr-50-[0-9-]+`).FindString(stderr.String())
	require.NotEmpty(t, op)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "interrupted: %v\n%s", err, stderr.String())
	require.Equal(t, 130, exit.ExitCode(), "interrupted")
	require.Contains(t, stderr.String(), "--resume "+op)
	_, err = os.Stat(credsFile)
	require.True(t, os.IsNotExist(err), "no credentials file while the workflow has not created the devices")
	_, err = os.Stat(credsFile + ".pending")
	require.NoError(t, err, "the secrets are kept")

	e.startWorker()
	out, err := e.cli(ctx, "provision", "--resume", op, "--creds-out", credsFile, "-o", "json")
	require.NoError(t, err)
	require.Equal(t, int64(50), parseSummary(t, out).Counts.Created)
	cs := mustCreds(t, credsFile)
	require.Len(t, cs, 50)
	a, err := e.reg.DeviceAuth(ctx, cs[7].ID)
	require.NoError(t, err)
	require.True(t, creds.Matches(cs[7].Secret, a.Secret1Hash))
}

// provision --detach returns once the workflow has started, with the secrets left in the pending file, and
// --resume collects them; -o yaml carries the same fields as -o json.
func TestDetachedProvisioningIsCollectedWithResume(t *testing.T) {
	e := newEnv(t)
	e.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	credsFile := filepath.Join(t.TempDir(), "creds.ndjson")
	out, err := e.cli(ctx, "provision", "--count", "20", "--prefix", "det-", "--creds-out", credsFile, "--detach", "-o", "json")
	require.NoError(t, err)
	var started struct {
		ID                 string `json:"id"`
		Total              int64  `json:"total"`
		TemporalURL        string `json:"temporalUrl"`
		PendingCredentials string `json:"pendingCredentials"`
		Resume             string `json:"resume"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &started), out)
	require.True(t, strings.HasPrefix(started.ID, "provision-det-20-"), started.ID)
	require.Equal(t, int64(20), started.Total)
	require.Equal(t, credsFile+".pending", started.PendingCredentials)
	require.Contains(t, started.Resume, "--resume "+started.ID)
	require.Contains(t, started.TemporalURL, started.ID)
	_, err = os.Stat(started.PendingCredentials)
	require.NoError(t, err, "the secrets wait in the pending file")

	out, err = e.cli(ctx, "provision", "--resume", started.ID, "--creds-out", credsFile, "-o", "yaml")
	require.NoError(t, err)
	require.Contains(t, out, "workflowId: "+started.ID)
	require.Contains(t, out, "credentials: 20")
	require.Len(t, mustCreds(t, credsFile), 20)
}
