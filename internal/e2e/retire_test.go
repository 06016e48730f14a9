package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// connectAs opens a device connection with id's credentials and returns the error of the CONNECT.
func (e *env) connectAs(ctx context.Context, id, secret string) error {
	d, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: id, Secret: secret, MaxReconnectInterval: time.Second})
	require.NoError(e.t, err)
	defer d.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return d.Connect(cctx)
}

func TestRetireDisableReplacePurge(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 6, "r")
	secret := map[string]string{}
	for _, c := range cs {
		secret[c.ID] = c.Secret
	}
	e.simulate(ctx, cs, simulator.Config{})
	_, err := e.cli(ctx, "twin", "set-desired", "r-0004", "--patch", `{"telemetryInterval": 15}`)
	require.NoError(t, err)

	// Retire two connected devices and an unknown id: the unknown one is reported, the others retired.
	kicks := e.gw.Stats().Kicks
	start := time.Now()
	out, err := e.cliCombined(ctx, "retire", "r-0001", "r-0002", "no-such-device", "--reason", "hardware fault")
	require.Equal(t, 2, exitCodeOf(err), "an unknown id is invalid input: %v\n%s", err, out)
	assert.Contains(t, out, "2 retired, 0 already retired, 1 unknown")
	assert.Contains(t, out, "no-such-device")
	require.Eventually(t, func() bool { return e.gw.Stats().Kicks >= kicks+2 }, time.Second, 10*time.Millisecond,
		"the live sessions were not dropped within 1 s of the retire")
	t.Logf("retire CLI to both sessions dropped: %s", time.Since(start))
	require.ErrorIs(t, e.connectAs(ctx, "r-0001", secret["r-0001"]), device.ErrNotAuthorized)

	// Archived, out of default queries, visible when asked for.
	var archived int
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices_archive WHERE id IN ('r-0001', 'r-0002') AND reason = 'hardware fault' AND twin ? 'reported'").Scan(&archived))
	assert.Equal(t, 2, archived)
	res, err := e.reg.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE tags.region = 'r'", queryOpts)
	require.NoError(t, err)
	assert.EqualValues(t, 4, res.Rows[0][0])
	res, err = e.reg.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE tags.region = 'r' AND status = 'retired'", queryOpts)
	require.NoError(t, err)
	assert.EqualValues(t, 2, res.Rows[0][0])

	// Twice is harmless.
	out, err = e.cli(ctx, "retire", "r-0001")
	require.NoError(t, err)
	assert.Contains(t, out, "0 retired, 1 already retired, 0 unknown")

	// Disable drops the session and refuses reconnects; enable lets the device back in.
	kicks = e.gw.Stats().Kicks
	_, err = e.cli(ctx, "devices", "disable", "r-0003", "--reason", "suspicious traffic")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e.gw.Stats().Kicks > kicks }, 5*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, e.connectAs(ctx, "r-0003", secret["r-0003"]), device.ErrNotAuthorized)
	_, err = e.cli(ctx, "devices", "enable", "r-0003")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return e.connectAs(ctx, "r-0003", secret["r-0003"]) == nil }, 10*time.Second, 200*time.Millisecond)
	out, err = e.cliCombined(ctx, "devices", "enable", "r-0001")
	require.Error(t, err)
	assert.Contains(t, out, "retired")

	// Replace: the new device is provisioned, gets the tags and desired, and the old one is retired.
	credsFile := filepath.Join(t.TempDir(), "new.creds")
	out, err = e.cli(ctx, "replace", "r-0004", "r-new-0004", "--creds-out", credsFile)
	require.NoError(t, err)
	assert.Contains(t, out, "r-new-0004 replaced r-0004")
	nc := mustCreds(t, credsFile)
	require.Len(t, nc, 1)
	tw, err := e.reg.GetTwin(ctx, "r-new-0004")
	require.NoError(t, err)
	assert.JSONEq(t, `{"region":"r"}`, string(tw.Tags))
	assert.Contains(t, string(tw.Properties.Desired.Doc), `"telemetryInterval": 15`)
	old, err := e.reg.GetDevice(ctx, "r-0004")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusRetired, old.Status)
	var replacedBy, replaces string
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT (SELECT replaced_by FROM devices WHERE id = 'r-0004'), (SELECT replaces FROM devices WHERE id = 'r-new-0004')").Scan(&replacedBy, &replaces))
	assert.Equal(t, "r-new-0004", replacedBy)
	assert.Equal(t, "r-0004", replaces)
	require.NoError(t, e.connectAs(ctx, "r-new-0004", nc[0].Secret), "the replacement connects with its new credentials")
	out, err = e.cli(ctx, "twin", "get", "r-new-0004", "-o", "json")
	require.NoError(t, err)
	assert.Contains(t, out, `"replaces": "r-0004"`)
	out, err = e.cli(ctx, "devices", "history", "r-0004")
	require.NoError(t, err)
	assert.Contains(t, out, "replaced by r-new-0004")

	// Bad input: each a clear error, nothing changed.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"replace", "r-0005", "r-0001"}, "retired"},
		{[]string{"replace", "no-such", "r-x"}, "no device"},
		{[]string{"replace", "r-0005", "r-0005"}, "cannot replace itself"},
		{[]string{"purge", "--older-than", "ninety"}, "--older-than"},
		{[]string{"purge", "--older-than", "-5d"}, "--older-than"},
		{[]string{"retire"}, "give device ids or --query"},
		{[]string{"retire", "--query", "SELECT * FROM devices WHERE tags.region = 'nowhere'"}, "nothing to retire"},
		{[]string{"devices", "disable", "no-such"}, "no device"},
	} {
		out, err := e.cliCombined(ctx, tc.args...)
		require.Error(t, err, strings.Join(tc.args, " "))
		assert.Contains(t, out, tc.want, strings.Join(tc.args, " "))
	}
	d5, err := e.reg.GetDevice(ctx, "r-0005")
	require.NoError(t, err)
	assert.Equal(t, fleet.StatusActive, d5.Status)

	// Purge past retention removes the retired devices entirely.
	time.Sleep(1100 * time.Millisecond)
	out, err = e.cli(ctx, "purge", "--older-than", "1s")
	require.NoError(t, err)
	assert.Contains(t, out, "purged 3 retired devices")
	_, err = e.reg.GetDevice(ctx, "r-0001")
	require.Error(t, err)
	var left int
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT count(*) FROM devices_archive").Scan(&left))
	assert.Zero(t, left)
}
