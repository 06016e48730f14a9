package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/scheme"
)

// reportedSchema is a reported-properties schema as an operator writes one: typed values, a required
// firmware version, open to keys it does not name.
const reportedSchema = `{"type":"object","properties":{
  "firmware":{"type":"object","properties":{"version":{"type":"string"}},"required":["version"]},
  "telemetryInterval":{"type":"integer","minimum":1},
  "health":{"type":"object","properties":{"status":{"enum":["ok","failing"]}}}},
  "required":["firmware"]}`

func compileScheme(t *testing.T, version int64, reported string) *scheme.Scheme {
	t.Helper()
	var rep []byte
	if reported != "" {
		rep = []byte(reported)
	}
	s, err := scheme.Compile(version, []byte(`{"type":"object"}`), rep)
	require.NoError(t, err)
	return s
}

// reportErr sends patch from d and returns the gateway's refusal (nil when it was applied).
func reportErr(t *testing.T, d *device.Device, patch string) *device.ResponseError {
	t.Helper()
	_, err := d.ReportPatch(context.Background(), json.RawMessage(patch))
	if err == nil {
		return nil
	}
	var re *device.ResponseError
	require.ErrorAs(t, err, &re)
	return re
}

// A reported patch that violates the scheme's reported-properties schema is refused whole with 400, code
// SchemeViolation and the path and rule, nothing of it written; the refusal is counted by reason and put on
// the device's timeline once however often the device repeats it. A device whose stored document violates
// the schema (set with --allow-existing-violations) still reports what is valid.
func TestReportedPatchesCheckedAgainstTheScheme(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.Add("dev-b", "sb")
	store.Add("dev-c", "sc")
	// dev-b's stored document violates the schema: no firmware, a string interval.
	_, err := store.Fleet.ApplyReported(context.Background(), []fleet.ReportedPatch{{DeviceID: "dev-b", Patch: json.RawMessage(`{"telemetryInterval":"soon"}`)}})
	require.NoError(t, err)
	store.SetScheme(compileScheme(t, 2, reportedSchema))
	reg := metrics.NewRegistry()
	g := gatewaytest.StartGateway(t, store, gateway.Config{Metrics: reg})
	url := gatewaytest.URL(g)
	a := mustConnect(t, url, "dev-a", "sa")

	require.Nil(t, reportErr(t, a, `{"firmware":{"version":"1.0.0"},"telemetryInterval":30}`))
	re := reportErr(t, a, `{"health":{"status":"ok"},"telemetryInterval":"30"}`)
	require.NotNil(t, re, "a string where the schema wants an integer")
	assert.Equal(t, 400, re.Status)
	assert.Equal(t, protocol.SchemeViolationCode, re.Code)
	assert.Equal(t, "properties.reported.telemetryInterval: got string, want integer", re.Message)
	assert.Equal(t, []protocol.PathRule{{Path: "properties.reported.telemetryInterval", Rule: "got string, want integer"}}, re.Violations)
	re = reportErr(t, a, `{"firmware":null}`)
	require.NotNil(t, re, "deleting what the schema requires")
	assert.Equal(t, "properties.reported.firmware: deletes a required property", re.Message)
	doc, v := store.Reported("dev-a")
	assert.JSONEq(t, `{"firmware":{"version":"1.0.0"},"telemetryInterval":30}`, string(doc), "nothing of a refused patch is written, not even its valid health")
	assert.Equal(t, int64(1), v)

	// The stored debt does not lock dev-b out: its patch is checked, not the document it lands in.
	b := mustConnect(t, url, "dev-b", "sb")
	require.Nil(t, reportErr(t, b, `{"health":{"status":"ok"}}`))
	require.NotNil(t, reportErr(t, b, `{"telemetryInterval":"later"}`), "but a new violation is refused")
	doc, _ = store.Reported("dev-b")
	assert.JSONEq(t, `{"telemetryInterval":"soon","health":{"status":"ok"}}`, string(doc))

	// The raw answer, as a device without the SDK reads it.
	raw, err := gatewaytest.Dial(t, url, "dev-c", "dev-c", "sc")
	require.NoError(t, err)
	raw.Sub(t, 1, "devices/dev-c/twin/res/#")
	require.NoError(t, raw.Pub(t, "devices/dev-c/twin/reported/r9", 1, `{"health":{"status":"dead"}}`))
	m, ok := raw.WaitMessage(t, "devices/dev-c/twin/res/400/r9", 5*time.Second)
	require.True(t, ok)
	assert.JSONEq(t, `{"error":"properties.reported.health.status: value must be one of 'ok', 'failing'","code":"SchemeViolation",
		"violations":[{"path":"properties.reported.health.status","rule":"value must be one of 'ok', 'failing'"}]}`, string(m.Payload))

	st := g.Stats()
	assert.Equal(t, int64(4), st.SchemeRefused)
	assert.Equal(t, int64(2), st.ReportedApplied)
	assert.Zero(t, st.Malformed, "a scheme refusal is not malformed traffic")
	srv, err := metrics.Serve("127.0.0.1:0", metrics.Handler(reg), gatewaytest.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	got := scrapeMetrics(t, srv.URL())
	assert.Equal(t, 4.0, got[`fleetflow_gateway_reported_refused_total{reason="scheme"}`])
	assert.Equal(t, 0.0, got[`fleetflow_gateway_reported_refused_total{reason="malformed"}`])

	// One timeline entry per device, naming the path and rule of the first refusal.
	require.Eventually(t, func() bool {
		n := map[string]int{}
		for _, e := range store.Events() {
			if e.Kind == fleet.ConnReportRefused {
				n[e.DeviceID]++
				if e.DeviceID == "dev-a" && !strings.Contains(e.Reason, "properties.reported.telemetryInterval: got string, want integer") {
					return false
				}
			}
		}
		return n["dev-a"] == 1 && n["dev-b"] == 1
	}, 10*time.Second, 20*time.Millisecond, "one refusal per device on the timeline: %v", store.Events())
}

// The gateway follows the scheme in force without a restart: a reported schema set while it runs is enforced
// once announced, and one removed (a version without a reported part) stops refusing.
func TestReportedSchemeFollowsChanges(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.SetScheme(compileScheme(t, 1, ""))
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	a := mustConnect(t, gatewaytest.URL(g), "dev-a", "sa")
	require.Nil(t, reportErr(t, a, `{"telemetryInterval":"x"}`), "no reported schema: anything goes")

	store.SetScheme(compileScheme(t, 2, reportedSchema))
	require.Eventually(t, func() bool { return reportErr(t, a, `{"telemetryInterval":"y"}`) != nil }, 10*time.Second, 20*time.Millisecond)
	require.Nil(t, reportErr(t, a, `{"telemetryInterval":5}`))

	store.SetScheme(compileScheme(t, 3, ""))
	require.Eventually(t, func() bool { return reportErr(t, a, `{"telemetryInterval":"z"}`) == nil }, 10*time.Second, 20*time.Millisecond)
	doc, _ := store.Reported("dev-a")
	assert.JSONEq(t, `{"telemetryInterval":"z"}`, string(doc))
}

// A gateway that could not read the scheme does not let reports through unchecked: they are answered 503
// (retry later) until a read succeeds, which the gateway retries by itself.
func TestReportsWaitForTheScheme(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-a", "sa")
	store.SetScheme(compileScheme(t, 1, reportedSchema))
	store.FailScheme(errors.New("registry down"))
	g := gatewaytest.StartGateway(t, store, gateway.Config{})
	a := mustConnect(t, gatewaytest.URL(g), "dev-a", "sa")
	re := reportErr(t, a, `{"telemetryInterval":"x"}`)
	require.NotNil(t, re)
	assert.Equal(t, 503, re.Status)
	calls := store.SchemeCalls()
	require.Eventually(t, func() bool { return store.SchemeCalls() > calls }, 10*time.Second, 20*time.Millisecond, "the read is retried")

	store.FailScheme(nil)
	require.Eventually(t, func() bool {
		re := reportErr(t, a, `{"telemetryInterval":"x"}`)
		return re != nil && re.Status == 400
	}, 20*time.Second, 50*time.Millisecond, "checked once the scheme is read")
	require.Nil(t, reportErr(t, a, `{"firmware":{"version":"1"}}`))
	doc, _ := store.Reported("dev-a")
	assert.JSONEq(t, `{"firmware":{"version":"1"}}`, string(doc))
}
