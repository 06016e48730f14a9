package protocol_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

func TestDeviceIDs(t *testing.T) {
	for id, want := range map[string]bool{
		"d1": true, "0": true, "dev.7_x-y": true, strings.Repeat("a", 64): true,
		"": false, strings.Repeat("a", 65): false, "D1": false, "-d": false, ".d": false, "_d": false,
		"d/1": false, "d+": false, "d#": false, "d 1": false, "dé": false, "svc:fleetflow": false,
		"inline": false, "inline2": true,
	} {
		if got := protocol.ValidDeviceID(id); got != want {
			t.Errorf("ValidDeviceID(%q) = %v", id, got)
		}
		err := protocol.ValidateDeviceID(id)
		if (err == nil) != want || (err != nil && !errors.Is(err, protocol.ErrInvalidID)) {
			t.Errorf("ValidateDeviceID(%q) = %v", id, err)
		}
	}
	if err := protocol.ValidateDeviceID("inline"); err == nil || err.Error() != `invalid device id "inline": reserved by the gateway` {
		t.Errorf("the reserved id is not called reserved: %v", err)
	}
	if err := protocol.ValidateDeviceID("D1"); err == nil || err.Error() != `invalid device id "D1": must match [a-z0-9][a-z0-9._-]{0,63}` {
		t.Errorf("ValidateDeviceID(D1) = %v", err)
	}
}

func TestTokens(t *testing.T) {
	for s, want := range map[string]bool{
		"a": true, "A.b_c-9": true, strings.Repeat("Z", 64): true,
		"": false, strings.Repeat("Z", 65): false, "a/b": false, "a+": false, "#": false, "a b": false,
		"a!": false, "é": false, "a:b": false,
	} {
		if protocol.ValidRequestID(s) != want || protocol.ValidMethod(s) != want || protocol.ValidJobID(s) != want {
			t.Errorf("%q: request id %v, method %v, job id %v; want %v", s,
				protocol.ValidRequestID(s), protocol.ValidMethod(s), protocol.ValidJobID(s), want)
		}
		if err := protocol.ValidateMethod(s); (err == nil) != want || (err != nil && !errors.Is(err, protocol.ErrInvalidID)) {
			t.Errorf("ValidateMethod(%q) = %v", s, err)
		}
		if err := protocol.ValidateJobID(s); (err == nil) != want || (err != nil && !strings.Contains(err.Error(), "job id")) {
			t.Errorf("ValidateJobID(%q) = %v", s, err)
		}
	}
}

func TestLevelsAndStreams(t *testing.T) {
	for s, want := range map[string]bool{
		"env": true, "room 2": true, "température": true,
		"": false, "a/b": false, "+": false, "a#": false, "a\x00": false, "\xff": false,
	} {
		if got := protocol.ValidLevel(s); got != want {
			t.Errorf("ValidLevel(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]bool{
		"env": true, "env/room": true, "a/b/c": true,
		"": false, "/env": false, "env/": false, "a//b": false, "a/+": false, "#": false,
	} {
		if got := protocol.ValidStream(s); got != want {
			t.Errorf("ValidStream(%q) = %v", s, got)
		}
	}
}

func TestDeviceMayUse(t *testing.T) {
	for topic, want := range map[string]bool{
		"devices/d1/telemetry":         true,
		"devices/d1/twin/res/#":        true,
		"devices/d1/+/x":               true,
		"devices/d1/#":                 true,
		"devices/d1/":                  false,
		"devices/d1":                   false,
		"devices/d10/telemetry":        false,
		"devices/d2/telemetry":         false,
		"devices/+/telemetry":          false,
		"devices/#":                    false,
		"#":                            false,
		"$share/g/devices/d1/#":        false,
		"$SYS/broker/uptime":           false,
		"other/d1/telemetry":           false,
		"devices//d1/x":                false,
		"/devices/d1/x":                false,
		"devices/d1.x/telemetry":       false,
		"devices/d1/twin/reported/abc": true,
	} {
		if got := protocol.DeviceMayUse("d1", topic); got != want {
			t.Errorf("DeviceMayUse(d1, %q) = %v", topic, got)
		}
	}
	if protocol.DeviceMayUse("", "devices//x") || protocol.DeviceMayUse("+", "devices/+/x") {
		t.Error("an empty or wildcard id may use topics")
	}
}

func TestServiceMayUse(t *testing.T) {
	for topic, want := range map[string]bool{
		"devices/d1/methods/req/ping/1":       true,
		"devices/+/twin/reported/+":           true,
		"devices/#":                           true,
		"$share/engine/devices/+/telemetry/#": true,
		"$SHARE/engine/devices/#":             true,
		"$share//devices/#":                   false,
		"$share/+/devices/#":                  false,
		"$share/engine":                       false,
		"$share/engine/other/#":               false,
		"$SYS/#":                              false,
		"#":                                   false,
		"devices/":                            false,
		"devicesx/#":                          false,
	} {
		if got := protocol.ServiceMayUse(topic); got != want {
			t.Errorf("ServiceMayUse(%q) = %v", topic, got)
		}
	}
	for _, f := range []string{protocol.AllDevicesFilter, protocol.MethodResponseFilter, protocol.SharedFilter("fleetflow-1", protocol.MethodResponseFilter)} {
		if !protocol.ServiceMayUse(f) {
			t.Errorf("a service may not use its own filter %q", f)
		}
	}
	for _, f := range []string{protocol.TwinResponseFilter("d1"), protocol.DesiredFilter("d1"), protocol.MethodRequestFilter("d1"), protocol.StateTopic("d1")} {
		if !protocol.DeviceMayUse("d1", f) || protocol.DeviceMayUse("d2", f) {
			t.Errorf("device filter %q is not d1's alone", f)
		}
	}
}
