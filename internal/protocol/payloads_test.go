package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

func TestErrorAndOfflineBodies(t *testing.T) {
	if got := string(protocol.ErrorPayload(`bad "x"`)); got != `{"error":"bad \"x\""}` {
		t.Errorf("ErrorPayload = %s", got)
	}
	if got := protocol.ParseError([]byte(`{"error":"busy"}`)); got.Error != "busy" || got.Code != "" {
		t.Errorf("ParseError = %+v", got)
	}
	if got := protocol.ParseError([]byte(`nope`)); got.Error != "" || got.Code != "" || got.Violations != nil {
		t.Errorf("ParseError(not JSON) = %+v", got)
	}
	// A scheme refusal lists its violations, at most MaxViolations of them.
	vs := make([]protocol.PathRule, protocol.MaxViolations+5)
	for i := range vs {
		vs[i] = protocol.PathRule{Path: "properties.reported.x", Rule: "got string, want integer"}
	}
	got := protocol.ParseError(protocol.SchemeViolationPayload("properties.reported.x: got string, want integer (and 24 more)", vs))
	if got.Code != protocol.SchemeViolationCode || len(got.Violations) != protocol.MaxViolations || got.Violations[0] != vs[0] ||
		!strings.HasPrefix(got.Error, "properties.reported.x") {
		t.Errorf("SchemeViolationPayload round trip = %+v", got)
	}
	off := protocol.OfflinePayload()
	if string(off) != `{"error":"device offline","code":"DeviceNotOnline"}` {
		t.Errorf("OfflinePayload = %s", off)
	}
	off[0] = 'x'
	if protocol.OfflinePayload()[0] != '{' {
		t.Error("OfflinePayload shares its bytes between calls")
	}
	for _, c := range []struct {
		status int
		body   string
		want   bool
	}{
		{404, `{"error":"device offline","code":"DeviceNotOnline"}`, true},
		{404, `{"code":"DeviceNotOnline"}`, true},
		{404, `{"error":"unknown method \"x\""}`, false}, // the device's own 404
		{500, `{"code":"DeviceNotOnline"}`, false},
		{404, `not json`, false},
		{404, ``, false},
	} {
		if got := protocol.IsOffline(c.status, []byte(c.body)); got != c.want {
			t.Errorf("IsOffline(%d, %s) = %v", c.status, c.body, got)
		}
	}
	if got := string(protocol.ReportedAckPayload(42)); got != `{"version":42}` {
		t.Errorf("ReportedAckPayload = %s", got)
	}
	var ack protocol.ReportedAck
	if err := json.Unmarshal(protocol.ReportedAckPayload(7), &ack); err != nil || ack.Version != 7 {
		t.Errorf("ReportedAck round trip: %+v, %v", ack, err)
	}
}

func TestJobProgress(t *testing.T) {
	for _, s := range []string{"downloading", "installing", "rebooting", "succeeded", "failed"} {
		if !protocol.ValidJobStatus(s) {
			t.Errorf("ValidJobStatus(%q) = false", s)
		}
	}
	for _, s := range []string{"", "Succeeded", "done", "baking"} {
		if protocol.ValidJobStatus(s) {
			t.Errorf("ValidJobStatus(%q) = true", s)
		}
	}
	for body, want := range map[string]protocol.JobProgress{
		`{"status":"downloading","progress":40}`:        {Status: "downloading", Progress: 40},
		`{"status":"installing","progress":39.6,"x":1}`: {Status: "installing", Progress: 40},
		`{"status":"failed","reason":"disk full"}`:      {Status: "failed", Reason: "disk full"},
		`{"status":"succeeded","progress":100}`:         {Status: "succeeded", Progress: 100},
	} {
		got, err := protocol.ParseJobProgress([]byte(body))
		if err != nil || got != want {
			t.Errorf("ParseJobProgress(%s) = %+v, %v", body, got, err)
		}
	}
	for _, body := range []string{
		``, `null`, `[]`, `"succeeded"`, `{}`, `{"status":"done"}`, `{"status":1}`,
		`{"status":"failed","reason":"` + strings.Repeat("r", protocol.MaxJobReasonBytes+1) + `"}`,
		`{"status":"installing","progress":-1}`, `{"status":"installing","progress":101}`,
		`{"status":"installing","progress":"50"}`,
		`{"status":"failed","pad":"` + strings.Repeat("p", protocol.MaxJobStatusBytes) + `"}`,
	} {
		if got, err := protocol.ParseJobProgress([]byte(body)); err == nil {
			t.Errorf("ParseJobProgress(%.60s) = %+v, want an error", body, got)
		}
	}
	b, err := protocol.JobProgress{Status: "failed", Reason: "checksum", Progress: 10}.Payload()
	if err != nil || string(b) != `{"status":"failed","reason":"checksum","progress":10}` {
		t.Errorf("Payload = %s, %v", b, err)
	}
	b, err = protocol.JobProgress{Status: "rebooting"}.Payload()
	if err != nil || string(b) != `{"status":"rebooting"}` {
		t.Errorf("Payload = %s, %v", b, err)
	}
	for _, p := range []protocol.JobProgress{{}, {Status: "done"}, {Status: "failed", Progress: 101}, {Status: "failed", Progress: -1},
		{Status: "failed", Reason: strings.Repeat("r", protocol.MaxJobReasonBytes+1)}, {Status: "failed", Reason: "\xff"}} {
		if _, err := p.Payload(); err == nil {
			t.Errorf("Payload(%+v) accepted", p)
		}
	}
}

func TestState(t *testing.T) {
	for _, s := range []protocol.State{{Online: true, Session: 1733450000123}, {Online: false, Session: 0}, {Online: false, Session: -1}} {
		b := s.Payload()
		want, _ := json.Marshal(s)
		if string(b) != string(want) {
			t.Errorf("Payload = %s, want %s", b, want)
		}
		got, err := protocol.ParseState(b)
		if err != nil || got != s {
			t.Errorf("ParseState(%s) = %+v, %v", b, got, err)
		}
	}
	if got := string(protocol.State{Online: true, Session: 5}.Payload()); got != `{"online":true,"session":5}` {
		t.Errorf("Payload = %s", got)
	}
	for _, body := range []string{``, `{}`, `{"online":true}`, `{"session":3}`, `{"online":"yes","session":3}`, `[]`} {
		if got, err := protocol.ParseState([]byte(body)); err == nil {
			t.Errorf("ParseState(%s) = %+v, want an error", body, got)
		}
	}
}

func TestFirmwareRequestDesiredPatch(t *testing.T) {
	full := protocol.FirmwareRequest{JobID: "rollout-2.0.0-1", Version: "2.0.0", URL: "https://fw.example/2.0.0.bin", SHA256: "ab12"}
	var got map[string]protocol.FirmwareRequest
	if err := json.Unmarshal(full.DesiredPatch(), &got); err != nil {
		t.Fatalf("patch is not JSON: %v", err)
	}
	if got[protocol.FirmwareKey] != full {
		t.Errorf("round trip: got %+v, want %+v", got[protocol.FirmwareKey], full)
	}
	bare := protocol.FirmwareRequest{JobID: "j1", Version: "1.0.0"}
	if s := string(bare.DesiredPatch()); s != `{"firmware":{"jobId":"j1","version":"1.0.0"}}` {
		t.Errorf("a request without url and checksum: %s", s)
	}
}
