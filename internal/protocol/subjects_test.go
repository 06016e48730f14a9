package protocol_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

func TestDeviceSubjects(t *testing.T) {
	cases := []struct {
		id      string
		kind    protocol.SubjectKind
		subject string
	}{
		{"dev-1", protocol.SubjectDesired, "ff.dev.dev-1.desired"},
		{"sensor.eu.0042", protocol.SubjectMethod, "ff.dev.sensor~eu~0042.method"},
		{"a_b-c.d", protocol.SubjectKick, "ff.dev.a_b-c~d.kick"},
		{"0", protocol.SubjectKick, "ff.dev.0.kick"},
		{"x..y", protocol.SubjectDesired, "ff.dev.x~~y.desired"},
	}
	for _, c := range cases {
		got := protocol.DeviceSubject(c.id, c.kind)
		if got != c.subject {
			t.Errorf("DeviceSubject(%q, %s) = %q, want %q", c.id, c.kind, got, c.subject)
		}
		id, k, err := protocol.ParseDeviceSubject(got)
		if err != nil || id != c.id || k != c.kind {
			t.Errorf("ParseDeviceSubject(%q) = %q, %q, %v", got, id, k, err)
		}
		if f := protocol.DeviceSubjectFilter(c.id); f != strings.TrimSuffix(c.subject, string(c.kind))+"*" {
			t.Errorf("DeviceSubjectFilter(%q) = %q", c.id, f)
		}
	}
}

func TestParseDeviceSubjectRefuses(t *testing.T) {
	for _, s := range []string{
		"", "ff.dev.", "ff.dev.dev-1", "ff.dev.dev-1.", "ff.dev.dev-1.other", "ff.dev.dev.1.desired",
		"ff.dev.Dev-1.desired", "ff.dev.~x.desired", "ff.dev.inline.method", "xx.dev.dev-1.desired",
		"ff.dev.dev-1.desired.extra", "ff.dev.-x.kick", "ff.dev.*.kick", "ff.dev.>.kick",
	} {
		if id, k, err := protocol.ParseDeviceSubject(s); err == nil {
			t.Errorf("ParseDeviceSubject(%q) = %q, %q; want an error", s, id, k)
		} else if !errors.Is(err, protocol.ErrNotDeviceSubject) {
			t.Errorf("ParseDeviceSubject(%q): %v does not wrap ErrNotDeviceSubject", s, err)
		}
	}
}

func TestKickAndTimeout(t *testing.T) {
	n, err := protocol.ParseKick(protocol.KickPayload(1234567890123))
	if err != nil || n != 1234567890123 {
		t.Fatalf("kick round trip: %d, %v", n, err)
	}
	for _, bad := range []string{"", "0", "-3", "x", "1.5"} {
		if _, err := protocol.ParseKick([]byte(bad)); err == nil {
			t.Errorf("ParseKick(%q) accepted", bad)
		}
	}
	if d := protocol.ParseTimeout(protocol.FormatTimeout(1500 * time.Millisecond)); d != 1500*time.Millisecond {
		t.Errorf("timeout round trip: %s", d)
	}
	for _, bad := range []string{"", "0", "-1", "soon"} {
		if d := protocol.ParseTimeout(bad); d != protocol.DefaultMethodTimeout {
			t.Errorf("ParseTimeout(%q) = %s, want the default", bad, d)
		}
	}
}

// validNATSToken reports whether s is usable as one literal token of a NATS subject.
func validNATSToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

func FuzzSubjectToken(f *testing.F) {
	for _, s := range []string{"dev-1", "a.b.c", "x~y", "inline", "a..b", "A", "", "~", "9.", "z_.-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// Every valid device id encodes to one literal token and back.
		if protocol.ValidDeviceID(s) {
			tok := protocol.SubjectToken(s)
			if !validNATSToken(tok) {
				t.Fatalf("SubjectToken(%q) = %q is not one NATS token", s, tok)
			}
			id, err := protocol.ParseSubjectToken(tok)
			if err != nil || id != s {
				t.Fatalf("ParseSubjectToken(SubjectToken(%q)) = %q, %v", s, id, err)
			}
			for _, k := range []protocol.SubjectKind{protocol.SubjectDesired, protocol.SubjectMethod, protocol.SubjectKick} {
				gotID, gotK, err := protocol.ParseDeviceSubject(protocol.DeviceSubject(s, k))
				if err != nil || gotID != s || gotK != k {
					t.Fatalf("subject round trip of %q/%s: %q %q %v", s, k, gotID, gotK, err)
				}
			}
		}
		// Every token that decodes is the encoding of what it decodes to (no two tokens name one device).
		if id, err := protocol.ParseSubjectToken(s); err == nil {
			if !protocol.ValidDeviceID(id) || protocol.SubjectToken(id) != s {
				t.Fatalf("ParseSubjectToken(%q) = %q, which encodes to %q", s, id, protocol.SubjectToken(id))
			}
		}
		// Parsing never panics and accepts only what it can rebuild.
		if id, k, err := protocol.ParseDeviceSubject(s); err == nil && protocol.DeviceSubject(id, k) != s {
			t.Fatalf("ParseDeviceSubject(%q) = %q, %q, which builds %q", s, id, k, protocol.DeviceSubject(id, k))
		}
	})
}

func TestParseDownlink(t *testing.T) {
	h := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	d, err := protocol.ParseDownlink("ff.dev.a~b.desired", h(map[string]string{protocol.HeaderVersion: "7"}), []byte(`{"x":1}`), "")
	if err != nil || d.Device != "a.b" || d.Kind != protocol.SubjectDesired || d.Version != 7 || string(d.Payload) != `{"x":1}` {
		t.Fatalf("desired: %+v %v", d, err)
	}
	d, err = protocol.ParseDownlink("ff.dev.d1.method", h(map[string]string{protocol.HeaderMethod: "reboot", protocol.HeaderTimeout: "2500"}), []byte(`{}`), "_INBOX.x.1")
	if err != nil || d.Method != "reboot" || d.Timeout != 2500*time.Millisecond || d.Reply != "_INBOX.x.1" {
		t.Fatalf("method: %+v %v", d, err)
	}
	d, err = protocol.ParseDownlink("ff.dev.d1.kick", h(nil), []byte("42"), "")
	if err != nil || d.Session != 42 || d.Payload != nil {
		t.Fatalf("kick: %+v %v", d, err)
	}
	for name, c := range map[string]struct {
		subject, reply string
		hdr            map[string]string
		body           string
	}{
		"desired without version": {"ff.dev.d1.desired", "", nil, "{}"},
		"desired version 0":       {"ff.dev.d1.desired", "", map[string]string{protocol.HeaderVersion: "0"}, "{}"},
		"method without name":     {"ff.dev.d1.method", "r", nil, "{}"},
		"method with a bad name":  {"ff.dev.d1.method", "r", map[string]string{protocol.HeaderMethod: "a/b"}, "{}"},
		"method without reply":    {"ff.dev.d1.method", "", map[string]string{protocol.HeaderMethod: "m"}, "{}"},
		"kick without number":     {"ff.dev.d1.kick", "", nil, ""},
		"not a device subject":    {"ff.other", "", nil, ""},
	} {
		if _, err := protocol.ParseDownlink(c.subject, h(c.hdr), []byte(c.body), c.reply); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
