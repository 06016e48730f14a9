package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// The scheme's reported-properties schema is enforced by the running gateway as soon as `scheme set` makes it
// the scheme in force (no restart): a paho device (the SDK) and a mosquitto device each get a violating report
// refused with 400 SchemeViolation naming the path and rule, nothing of it written, while their valid reports
// go through; a device whose stored document already violates the schema (set with
// --allow-existing-violations) keeps reporting what is valid; the refusal is on the device's timeline.
func TestReportedSchemeEnforcedAtIngest(t *testing.T) {
	requireMosquitto(t)
	e := newEnv(t)
	e.workerProcess()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	secrets := provisionDirect(t, e, "rs-", 2)
	sdk, mq := "rs-0001", "rs-0002"

	d, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: sdk, Secret: secrets[sdk], Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, d.Connect(ctx))
	t.Cleanup(d.Close)
	report := func(patch string) error {
		_, err := d.ReportPatch(ctx, json.RawMessage(patch))
		return err
	}
	// Before any reported schema: anything goes, and this one will be debt.
	require.NoError(t, report(`{"telemetryInterval": "fast"}`))

	dir := t.TempDir()
	tagsFile, repFile := filepath.Join(dir, "tags.json"), filepath.Join(dir, "reported.json")
	require.NoError(t, os.WriteFile(tagsFile, []byte(`{"type":"object"}`), 0o600))
	require.NoError(t, os.WriteFile(repFile, []byte(`{"type":"object","properties":{
		"telemetryInterval":{"type":"integer","minimum":1},
		"health":{"type":"object","properties":{"status":{"enum":["ok","failing"]}},"required":["status"]}}}`), 0o600))
	// The fleet violates it (rs-0001's interval): refused without --allow-existing-violations, so not enforced.
	out, err := e.cli(ctx, "scheme", "set", tagsFile, "--reported", repFile)
	require.Equal(t, 3, exitCodeOf(err), "refused: %s", out)
	require.NoError(t, report(`{"telemetryInterval": "faster"}`), "a refused version is not in force")
	out, err = e.cli(ctx, "scheme", "set", tagsFile, "--reported", repFile, "--allow-existing-violations")
	require.Equal(t, 3, exitCodeOf(err), "set with the debt listed: %s", out)

	// The running gateway follows: the SDK device's next violating report is refused.
	var re *device.ResponseError
	require.Eventually(t, func() bool {
		err := report(`{"telemetryInterval": "slow"}`)
		return errors.As(err, &re)
	}, 30*time.Second, 100*time.Millisecond, "the new reported schema takes effect on the running gateway")
	assert.Equal(t, protocol.StatusSchemeViolation, re.Status)
	assert.Equal(t, protocol.SchemeViolationCode, re.Code)
	assert.Equal(t, "properties.reported.telemetryInterval: got string, want integer", re.Message)
	// Refused whole: its valid part is not written either.
	before := e.reportedField(ctx, sdk, "telemetryInterval")
	require.ErrorAs(t, report(`{"telemetryInterval": "slowest", "health": {"status": "ok"}}`), &re)
	assert.Equal(t, []protocol.PathRule{{Path: "properties.reported.telemetryInterval", Rule: "got string, want integer"}}, re.Violations)
	assert.Equal(t, before, e.reportedField(ctx, sdk, "telemetryInterval"))
	assert.Empty(t, e.reportedField(ctx, sdk, "health"), "nothing of the refused patch was written")
	// Its stored debt does not lock it out: a valid patch goes through, and repays the debt.
	require.NoError(t, report(`{"health": {"status": "ok"}}`))
	require.NoError(t, report(`{"telemetryInterval": 30}`))
	assert.Equal(t, "30", e.reportedField(ctx, sdk, "telemetryInterval"))
	assert.Equal(t, "ok", e.reportedField(ctx, sdk, "health", "status"))

	// A device on Debian's mosquitto clients reads the same answer from the topic (mosquitto_rr waits on the
	// topic of the status it expects: a response topic has no wildcards).
	md := mosquittoDeviceAt(t, e.gw.Addr(), "", mq, secrets[mq])
	out, _, err = md.run(ctx, t, "mosquitto_rr", "-q", "1", "-v", "-W", "20",
		"-t", "devices/"+mq+"/twin/reported/bad1", "-e", "devices/"+mq+"/twin/res/400/bad1", "-m", `{"health":{"status":"on fire"}}`)
	require.NoError(t, err)
	topic, payload, _ := strings.Cut(strings.TrimSpace(out), " ")
	require.Equal(t, "devices/"+mq+"/twin/res/400/bad1", topic)
	body := protocol.ParseError([]byte(payload))
	assert.Equal(t, protocol.SchemeViolationCode, body.Code, payload)
	assert.Equal(t, []protocol.PathRule{{Path: "properties.reported.health.status", Rule: "value must be one of 'ok', 'failing'"}}, body.Violations)
	out, _, err = md.run(ctx, t, "mosquitto_rr", "-q", "1", "-v", "-W", "20",
		"-t", "devices/"+mq+"/twin/reported/good1", "-e", "devices/"+mq+"/twin/res/204/good1", "-m", `{"health":{"status":"failing"},"telemetryInterval":60}`)
	require.NoError(t, err)
	topic, _, _ = strings.Cut(strings.TrimSpace(out), " ")
	require.Equal(t, "devices/"+mq+"/twin/res/204/good1", topic)
	assert.Equal(t, "60", e.reportedField(ctx, mq, "telemetryInterval"))
	assert.Equal(t, "failing", e.reportedField(ctx, mq, "health", "status"))

	assert.Equal(t, int64(3), e.gw.Stats().SchemeRefused)
	require.Eventually(t, func() bool {
		out, err := e.cli(ctx, "devices", "history", mq)
		return err == nil && strings.Contains(out, "reported patch refused by the scheme: properties.reported.health.status: value must be one of 'ok', 'failing'")
	}, 30*time.Second, 200*time.Millisecond, "the refusal is on the device's timeline")
}
