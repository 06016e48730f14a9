package protocol_test

import (
	"testing"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// FuzzParseJobProgress feeds arbitrary job status payloads, as a device may publish them, to the parser the
// gateway admits them with: it never panics, and what it accepts is within the contract and encodes to a
// payload that parses back to the same progress.
func FuzzParseJobProgress(f *testing.F) {
	for _, s := range []string{`{"status":"downloading","progress":12.5}`, `{"status":"failed","reason":"disk full"}`,
		`{"status":"succeeded","extra":[1,2]}`, `{"status":"rebooting","progress":-0}`, `{"status":"x"}`, `[]`, `null`,
		`{"status":"installing","progress":1e400}`, `{"status":"installing","progress":"5"}`, "{\"status\":\"failed\",\"reason\":\"\xff\"}",
		`{"status":"failed","reason":"\ud800"}`, `{"status":"failed"} {}`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		p, err := protocol.ParseJobProgress(payload)
		if err != nil {
			if p != (protocol.JobProgress{}) {
				t.Fatalf("ParseJobProgress(%q) = %+v with error %v", payload, p, err)
			}
			return
		}
		b, err := p.Payload()
		if err != nil {
			t.Fatalf("ParseJobProgress(%q) accepted %+v, which does not encode: %v", payload, p, err)
		}
		again, err := protocol.ParseJobProgress(b)
		if err != nil || again != p {
			t.Fatalf("%+v encodes as %q, which parses as %+v (%v)", p, b, again, err)
		}
	})
}

// FuzzParseState feeds arbitrary retained state payloads to the parser the fleet's monitors read them with.
func FuzzParseState(f *testing.F) {
	for _, s := range []string{`{"online":true,"session":3}`, `{"online":false}`, ``, `{"online":1,"session":2}`,
		`{"online":true,"session":9223372036854775808}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		s, err := protocol.ParseState(payload)
		if err != nil {
			return
		}
		again, err := protocol.ParseState(s.Payload())
		if err != nil || again != s {
			t.Fatalf("%+v encodes as %q, which parses as %+v (%v)", s, s.Payload(), again, err)
		}
	})
}

// FuzzParseDownlink feeds arbitrary bus messages to the parser a gateway checks downlinks with before it
// relays them to a device: it never panics and accepts only what a device may be sent.
func FuzzParseDownlink(f *testing.F) {
	f.Add("ff.dev.d1.desired", "3", "", "", []byte(`{"a":1}`), "")
	f.Add("ff.dev.d1.method", "", "reboot", "1500", []byte(`{}`), "_INBOX.x")
	f.Add("ff.dev.d1.method", "", "", "x", []byte(`{}`), "")
	f.Add("ff.dev.d1.kick", "", "", "", []byte(`42`), "")
	f.Add("ff.dev.d1.kick", "", "", "", []byte(`-1`), "")
	f.Add("ff.dev..desired", "0", "", "", []byte(nil), "")
	f.Fuzz(func(t *testing.T, subject, version, method, timeout string, body []byte, reply string) {
		h := map[string]string{protocol.HeaderVersion: version, protocol.HeaderMethod: method, protocol.HeaderTimeout: timeout}
		d, err := protocol.ParseDownlink(subject, func(k string) string { return h[k] }, body, reply)
		if err != nil {
			return
		}
		if !protocol.ValidDeviceID(d.Device) || protocol.DeviceSubject(d.Device, d.Kind) != subject {
			t.Fatalf("ParseDownlink(%q) accepted device %q kind %q", subject, d.Device, d.Kind)
		}
		switch d.Kind {
		case protocol.SubjectDesired:
			if d.Version < 1 || len(d.Payload) > protocol.MaxDesiredPatch {
				t.Fatalf("accepted a desired patch of version %d and %d bytes", d.Version, len(d.Payload))
			}
		case protocol.SubjectMethod:
			if protocol.ValidateMethod(d.Method) != nil || d.Reply == "" || d.Timeout <= 0 || len(d.Payload) > protocol.MaxMethodPayload {
				t.Fatalf("accepted method request %+v", d)
			}
		case protocol.SubjectKick:
			if d.Session < 1 || d.Payload != nil {
				t.Fatalf("accepted kick %+v", d)
			}
		default:
			t.Fatalf("accepted kind %q", d.Kind)
		}
	})
}
