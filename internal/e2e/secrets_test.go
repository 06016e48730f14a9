package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
)

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// startCLI starts the CLI with its output captured, for tests that act while it waits.
func (e *env) startCLI(ctx context.Context, args ...string) (*exec.Cmd, *syncBuffer) {
	e.t.Helper()
	cmd := exec.CommandContext(ctx, bins.cli, args...)
	cmd.Env = e.environ()
	cmd.Dir = e.t.TempDir()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(e.t, cmd.Start())
	return cmd, out
}

// An interrupted replacement keeps NEW's only secret; `replace --resume` waits for the workflow and writes it.
func TestInterruptedReplaceResumesWithNEWsSecret(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := e.workerProcess()
	e.fleet(ctx, 1, "rpi")
	require.NoError(t, w.Process.Kill()) // no worker: the replacement waits, and the CLI is interrupted
	_ = w.Wait()

	credsFile := filepath.Join(t.TempDir(), "new.creds")
	cmd, out := e.startCLI(ctx, "replace", "rpi-0001", "rpi-new", "--creds-out", credsFile)
	require.Eventually(t, func() bool { return strings.Contains(out.String(), " started") }, time.Minute, 50*time.Millisecond)
	op := regexp.MustCompile(`replace-rpi-0001-[0-9-]+`).FindString(out.String())
	require.NotEmpty(t, op, out.String())
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	require.Equal(t, 130, exitCodeOf(err), "interrupted: %v\n%s", err, out.String())
	require.Contains(t, out.String(), "fleetflow replace --resume "+op+" --creds-out "+credsFile)
	_, err = os.Stat(credsFile + ".pending")
	require.NoError(t, err, "NEW's secret is kept")

	e.workerProcess()
	res, err := e.cliCombined(ctx, "replace", "--resume", op, "--creds-out", credsFile)
	require.NoError(t, err, res)
	require.Contains(t, res, "rpi-new replaced rpi-0001")
	cs := mustCreds(t, credsFile)
	require.Len(t, cs, 1)
	require.Equal(t, "rpi-new", cs[0].ID)
	a, err := e.reg.DeviceAuth(ctx, "rpi-new")
	require.NoError(t, err)
	require.True(t, creds.Matches(cs[0].Secret, a.Secret1Hash), "the file holds NEW's registered secret")
	_, err = os.Stat(credsFile + ".pending")
	require.True(t, errors.Is(err, os.ErrNotExist), "the pending file is gone once the file is written")
	require.NoError(t, e.connectAs(ctx, "rpi-new", cs[0].Secret))
}

// A replacement whose workflow fails after it created NEW (here OLD was retired meanwhile) still writes NEW's
// credentials file: the device exists, and its secret is nowhere else.
func TestFailedReplaceKeepsTheSecretOfTheDeviceItCreated(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := e.workerProcess()
	e.fleet(ctx, 1, "rpf")
	require.NoError(t, w.Process.Kill())
	_ = w.Wait()

	credsFile := filepath.Join(t.TempDir(), "new.creds")
	cmd, out := e.startCLI(ctx, "replace", "rpf-0001", "rpf-new", "--creds-out", credsFile)
	require.Eventually(t, func() bool { return strings.Contains(out.String(), " started") }, time.Minute, 50*time.Millisecond)
	_, err := e.reg.RetireDevices(ctx, "retire-meanwhile", []string{"rpf-0001"}, "test")
	require.NoError(t, err)
	e.workerProcess()
	err = cmd.Wait()
	require.NotZero(t, exitCodeOf(err), out.String())
	require.Contains(t, out.String(), "created before the failure")
	cs := mustCreds(t, credsFile)
	require.Len(t, cs, 1)
	a, err := e.reg.DeviceAuth(ctx, "rpf-new")
	require.NoError(t, err)
	require.True(t, creds.Matches(cs[0].Secret, a.Secret1Hash))
}

// An existing --creds-out is refused before anything is staged or created, and left as it was.
func TestExistingCredentialsFileIsRefused(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	e.fleet(ctx, 1, "ex")
	credsFile := filepath.Join(t.TempDir(), "earlier.creds")
	const earlier = `{"id":"somebody","secret":"the only copy"}` + "\n"
	require.NoError(t, os.WriteFile(credsFile, []byte(earlier), 0o600))
	for _, args := range [][]string{
		{"provision", "--count", "3", "--prefix", "exr-", "--creds-out", credsFile},
		{"replace", "ex-0001", "ex-new", "--creds-out", credsFile},
	} {
		out, err := e.cliCombined(ctx, args...)
		require.Equal(t, 1, exitCodeOf(err), "%s: %v\n%s", args[0], err, out)
		require.Contains(t, out, "never overwritten", args[0])
	}
	b, err := os.ReadFile(credsFile)
	require.NoError(t, err)
	require.Equal(t, earlier, string(b))
	var n int
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices WHERE id LIKE 'exr-%' OR id = 'ex-new'").Scan(&n))
	require.Zero(t, n, "nothing was created")
	var staged int
	require.NoError(t, e.reg.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM provision_rows)
		+ (SELECT count(*) FROM pg_tables WHERE tablename ~ '^provision_(rows|chunks)_[0-9]+$')`).Scan(&staged))
	require.Zero(t, staged, "nothing was staged")
}

// A manifest as a spreadsheet program saves it (byte-order mark, CRLF, quoted fields with commas, trailing
// empty lines) with a row whose id is empty and a retired device's id: the good rows are provisioned and
// their credentials written; the bad rows are reported by line and get no credential.
func TestSpreadsheetManifestWithBadRowsWritesEveryCreatedDevicesCredentials(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	e.fleet(ctx, 1, "old")
	_, err := e.reg.RetireDevices(ctx, "retire-old", []string{"old-0001"}, "test")
	require.NoError(t, err)
	dir := t.TempDir()
	manifest := filepath.Join(dir, "fleet.csv")
	body := "\xef\xbb\xbfid,address,site\r\n" +
		"sp-1,\"Main St 1, Berlin\",ber-1\r\n" +
		",\"Nowhere 2, Bonn\",bon-1\r\n" +
		"sp-3,\"Elm St 3, Hamburg\",ham-1\r\n" +
		"old-0001,\"Old St 4, Köln\",cgn-1\r\n" +
		"\r\n,,\r\n\r\n"
	require.NoError(t, os.WriteFile(manifest, []byte(body), 0o644))
	credsFile := filepath.Join(dir, "fleet.creds")
	out, err := e.cli(ctx, "provision", "--file", manifest, "--creds-out", credsFile, "-o", "json")
	require.Equal(t, 2, exitCodeOf(err), "invalid rows: %v", err)
	s := parseSummary(t, out)
	require.Equal(t, int64(4), s.Rows, "the trailing blank lines are not rows")
	require.Equal(t, int64(2), s.Counts.Created)
	require.Equal(t, int64(2), s.Counts.Invalid)
	reasons := map[int64]string{}
	for _, is := range s.Invalid {
		reasons[is.Line] = is.Reason
	}
	require.Equal(t, "missing id", reasons[3])
	require.Contains(t, reasons[5], "retired")
	require.Contains(t, reasons[5], "fleetflow purge")
	cs := mustCreds(t, credsFile)
	require.Len(t, cs, 2)
	require.Equal(t, []string{"sp-1", "sp-3"}, []string{cs[0].ID, cs[1].ID})
	tw, err := e.reg.GetTwin(ctx, "sp-1")
	require.NoError(t, err)
	require.JSONEq(t, `{"address":"Main St 1, Berlin","site":"ber-1"}`, string(tw.Tags))
	require.NoError(t, e.connectAs(ctx, "sp-3", cs[1].Secret))
}
