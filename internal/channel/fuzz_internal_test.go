package channel

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// jsonbStorable reports whether Postgres accepts b as jsonb: valid JSON, valid UTF-8, no NUL character in
// any key or string once decoded.
func jsonbStorable(b []byte) bool {
	var v any
	return utf8.Valid(b) && json.Unmarshal(b, &v) == nil && !hasNUL(v)
}

func hasNUL(v any) bool {
	switch x := v.(type) {
	case string:
		return strings.IndexByte(x, 0) >= 0
	case []any:
		for _, e := range x {
			if hasNUL(e) {
				return true
			}
		}
	case map[string]any:
		for k, e := range x {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(e) {
				return true
			}
		}
	}
	return false
}

// FuzzRawJSON feeds arbitrary method response bodies, as any device may send them, to the conversion that
// makes them a result's payload: it is JSON that jsonb can store, and a body that already was keeps its bytes.
func FuzzRawJSON(f *testing.F) {
	for _, s := range []string{`{"ok":true}`, `"x"`, `not json`, ``, ` `, `{"a":"\u0000"}`, "{\"a\":\"\xff\"}", "nul\x00",
		`[1,2`, `{"a":"\ud800"}`, "\xef\xbb\xbf{}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := rawJSON(body)
		if len(bytes.TrimSpace(body)) == 0 {
			if got != nil {
				t.Fatalf("rawJSON(%q) = %q, want nothing", body, got)
			}
			return
		}
		if !jsonbStorable(got) {
			t.Fatalf("rawJSON(%q) = %q, which jsonb cannot store", body, got)
		}
		if jsonbStorable(body) && !bytes.Contains(body, []byte(`\u0000`)) && !bytes.Equal(got, body) {
			t.Fatalf("rawJSON(%q) = %q, want the body unchanged", body, got)
		}
	})
}

// Found by FuzzRawJSON: a device answering with a NUL character (raw, or escaped in valid JSON) or with
// bytes that are not UTF-8 produced a payload that jsonb refuses, failing the write of the whole batch's
// outcomes; such answers are now kept as JSON strings of their printable text.
func TestRawJSONKeepsUnstorableAnswersAsStrings(t *testing.T) {
	for body, want := range map[string]string{
		`{"a":"\u0000"}`:   `"{\"a\":\"\\u0000\"}"`,
		"nul\x00":          `"nul"`,
		"{\"a\":\"\xff\"}": `"{\"a\":\"` + "\ufffd" + `\"}"`,
		`{"ok":true}`:      `{"ok":true}`,
		"not json":         `"not json"`,
	} {
		if got := string(rawJSON([]byte(body))); got != want {
			t.Errorf("rawJSON(%q) = %s, want %s", body, got, want)
		}
	}
}
