package scheme

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// flatSchemes are schemes the fast path compiles: what fleets declare, and the corners of each keyword it
// implements.
var flatSchemes = []string{
	// The provisioning benchmark's (bench/provision_test.go).
	`{"type":"object","properties":{
	  "region":{"enum":["eu","us","apac"]},
	  "site":{"type":"string","pattern":"^(eu|us|apac)-site-[0-9]{1,4}$"},
	  "model":{"type":"string","pattern":"^m[0-9]$"}},
	  "required":["region","site","model"],"additionalProperties":false}`,
	// Numbers: integer, bounds, multiples, numeric enums; open to other keys.
	`{"$schema":"https://json-schema.org/draft/2020-12/schema","properties":{
	  "floor":{"type":"integer","minimum":-2,"maximum":120},
	  "ratio":{"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1},
	  "step":{"multipleOf":0.5},
	  "level":{"enum":[1, 2.5, "high", true, null, {"a":1}, [1]]},
	  "fixed":{"const":3},
	  "any":{},
	  "yes":true},
	  "required":["floor"]}`,
	// Strings: lengths in characters, both type lists and a constant; additional keys must be booleans.
	`{"type":"object","properties":{
	  "name":{"type":"string","minLength":2,"maxLength":5},
	  "either":{"type":["string","integer"]},
	  "nothing":{"type":"null"},
	  "flag":{"type":"boolean"},
	  "ring":{"const":"canary"},
	  "never":false,
	  "weird key":{"type":"string","pattern":"x"},
	  "mail":{"type":"string","format":"email"}},
	  "required":["name","undeclared"],
	  "additionalProperties":{"type":"boolean"}}`,
	// Nothing but the object.
	`{"type":"object"}`,
}

// notFlat are schemes the fast path leaves to the full validator.
var notFlat = []string{
	`{"properties":{"a":{"$ref":"#/$defs/a"}},"$defs":{"a":{"type":"string"}}}`,
	`{"properties":{"a":{"anyOf":[{"type":"string"},{"type":"integer"}]}}}`,
	`{"properties":{"a":{"not":{"type":"string"}}}}`,
	`{"patternProperties":{"^x-":{"type":"string"}}}`,
	`{"minProperties":1}`,
	`{"dependentRequired":{"a":["b"]}}`,
	`{"if":{"required":["a"]},"then":{"required":["b"]}}`,
	`{"unevaluatedProperties":false}`,
	`{"propertyNames":{"maxLength":3}}`,
	`{"properties":{"a":{"enum":["x"],"const":"x"}}}`,
	// fleetflow's own formats are assertions the fast path does not implement.
	`{"properties":{"maintenance":{"type":"string","format":"maintenance-window"}}}`,
	`{"properties":{"timezone":{"type":"string","format":"timezone"}}}`,
}

func compileT(t testing.TB, doc string) *Scheme {
	t.Helper()
	s, err := Compile(1, []byte(doc), nil)
	require.NoError(t, err, doc)
	return s
}

func TestFlatCompiles(t *testing.T) {
	for _, doc := range flatSchemes {
		require.True(t, compileT(t, doc).Flat(), doc)
	}
	for _, doc := range notFlat {
		require.False(t, compileT(t, doc).Flat(), doc)
	}
}

// TestFastPathVerdicts checks, document by document, that ValidateTags (fast path first) says exactly what
// the full validator says, message for message, and that the fast path decides the plain documents itself:
// it accepts exactly the valid ones, so it is what provisioning runs on.
func TestFastPathVerdicts(t *testing.T) {
	cases := []struct {
		scheme int
		doc    string
		plain  bool // no escape, no nested value: the fast path's verdict equals the full validator's
	}{
		{0, `{"region":"eu","site":"eu-site-1","model":"m3"}`, true},
		{0, ` { "model" : "m0" , "site":"apac-site-9999","region":"apac" } `, true},
		{0, ``, true},       // read as {}: missing properties
		{0, `   `, true},    // the same
		{0, "\t{}\n", true}, // the same
		{0, `{"region":"mars","site":"eu-site-1","model":"m3"}`, true},
		{0, `{"region":"eu","site":"eu-site-12345","model":"m3"}`, true},
		{0, `{"region":"eu","site":"eu-site-1","model":"m3","extra":1}`, true},
		{0, `{"region":"eu","site":"eu-site-1"}`, true},
		{0, `{"region":"eu","site":"eu-site-1","model":3}`, true},
		{0, `{"region":"eu","site":"eu-site-1","model":"m3","model":"m4"}`, true},  // the last wins; both valid
		{0, `{"region":"eu","site":"eu-site-1","model":"m3","model":"mm"}`, true},  // the last is refused
		{0, `{"region":"eu","site":"eu-site-1","model":"mm","model":"m3"}`, false}, // the first is refused: the fast path is unsure
		{0, `{"region":"e\u0075","site":"eu-site-1","model":"m3"}`, false},
		{0, `{"region":"eu","site":"eu-site-1","model":"m3"} x`, true},
		{0, `{"region":"eu","site":"eu-site-1","model":"m3"`, true},
		{0, `{"region":"eu","site":"eu-site-1","model":"m3",}`, true},
		{0, `["region"]`, true},
		{0, `{"region":"eu","site":{"a":1},"model":"m3"}`, false},
		{1, `{"floor":3}`, true},
		{1, `{"floor":-2,"other":[1,{"x":null}]}`, false}, // valid, but nested: left to the full validator
		{1, `{"floor":3.0}`, true},                        // an integer, as the full validator reads it
		{1, `{"floor":1e2}`, true},
		{1, `{"floor":1.5}`, true},
		{1, `{"floor":121}`, true},
		{1, `{"floor":-3}`, true},
		{1, `{"floor":"3"}`, true},
		{1, `{"floor":01}`, true},
		{1, `{"floor":-}`, true},
		{1, `{"floor":1.}`, true},
		{1, `{"floor":1e}`, true},
		{1, `{"floor":0,"ratio":0.5}`, true},
		{1, `{"floor":0,"ratio":0}`, true},
		{1, `{"floor":0,"ratio":1}`, true},
		{1, `{"floor":0,"ratio":1e-3}`, true},
		{1, `{"floor":0,"step":1.5}`, true},
		{1, `{"floor":0,"step":1.25}`, true},
		{1, `{"floor":0,"step":"x"}`, true}, // multipleOf says nothing of strings
		{1, `{"floor":0,"level":2.50}`, true},
		{1, `{"floor":0,"level":25e-1}`, true},
		{1, `{"floor":0,"level":"high"}`, true},
		{1, `{"floor":0,"level":true}`, true},
		{1, `{"floor":0,"level":false}`, true},
		{1, `{"floor":0,"level":null}`, true},
		{1, `{"floor":0,"level":3}`, true},
		{1, `{"floor":0,"level":"High"}`, true},
		{1, `{"floor":0,"level":{"a":1}}`, false},
		{1, `{"floor":0,"fixed":3.0}`, true},
		{1, `{"floor":0,"fixed":4}`, true},
		{1, `{"floor":0,"any":null,"yes":"x"}`, true},
		{1, `{"floor":0,"any":tru}`, true},
		{1, `{"floor":0,"x":nul}`, true},
		{2, `{"name":"ab","undeclared":true}`, true},
		{2, `{"name":"a","undeclared":true}`, true},
		{2, `{"name":"abcdef","undeclared":true}`, true},
		{2, `{"name":"grüße","undeclared":true}`, true}, // five characters, seven bytes
		{2, `{"name":"ab","undeclared":"yes"}`, true},
		{2, `{"name":"ab"}`, true},
		{2, `{"name":"ab","undeclared":true,"either":"x","nothing":null,"flag":false,"ring":"canary"}`, true},
		{2, `{"name":"ab","undeclared":true,"either":1.5}`, true},
		{2, `{"name":"ab","undeclared":true,"either":2}`, true},
		{2, `{"name":"ab","undeclared":true,"nothing":0}`, true},
		{2, `{"name":"ab","undeclared":true,"ring":"main"}`, true},
		{2, `{"name":"ab","undeclared":true,"never":1}`, true},
		{2, `{"name":"ab","undeclared":true,"weird key":"axb"}`, true},
		{2, `{"name":"ab","undeclared":true,"weird key":"ab"}`, true},
		{2, `{"name":"ab","undeclared":true,"more":1}`, true},
		{2, `{"name":"ab","undeclared":true,"mail":"no address"}`, true}, // format is an annotation in draft 2020-12
		{2, "{\"name\":\"a\xffb\",\"undeclared\":true}", false},          // invalid UTF-8: the decoder replaces it
		{2, "{\"name\":\"a\tb\",\"undeclared\":true}", true},             // a raw control character is no JSON
		{3, `{}`, true},
		{3, `{"anything":"goes","n":-0.5e+3,"b":true}`, true},
		{3, `{"a":[1]}`, false},
		{3, `{"a":1}{}`, true},
	}
	schemes := make([]*Scheme, len(flatSchemes))
	for i, doc := range flatSchemes {
		schemes[i] = compileT(t, doc)
	}
	for _, c := range cases {
		s := schemes[c.scheme]
		full := validateDoc("tags", s.tags, []byte(c.doc))
		got := s.ValidateTags([]byte(c.doc))
		if full == nil {
			require.NoError(t, got, c.doc)
		} else {
			require.EqualError(t, got, full.Error(), c.doc)
			require.Equal(t, full, got, c.doc)
		}
		fast := s.fast.valid([]byte(c.doc))
		if c.plain {
			require.Equal(t, full == nil, fast, "%s: fast path %v, full validator %v", c.doc, fast, full)
		} else {
			require.False(t, fast, "%s: not plain, so not the fast path's to accept", c.doc)
		}
	}
}

func TestMemoWithFastPathKeepsWhatItHolds(t *testing.T) {
	s := compileT(t, flatSchemes[0])
	m := s.NewMemo(2)
	for _, doc := range []string{`{"region":"eu","site":"eu-site-1","model":"m1"}`, `{"region":"eu","site":"eu-site-2","model":"m1"}`,
		`{"region":"eu","site":"eu-site-3","model":"m1"}`, `{"region":"eu","site":"eu-site-4","model":"x"}`} {
		want, got := s.ValidateTags([]byte(doc)), m.ValidateTags([]byte(doc))
		if want == nil {
			require.NoError(t, got, doc)
		} else {
			require.EqualError(t, got, want.Error(), doc)
		}
	}
	require.Equal(t, 2, m.Len())
	_, ok := m.m[`{"region":"eu","site":"eu-site-1","model":"m1"}`]
	require.True(t, ok, "a full memo over a flat scheme keeps the documents it holds")
}

// FuzzFastPath checks the fast path against the full validator on arbitrary documents under every flat
// scheme above: it never accepts a document the full validator refuses, and ValidateTags always says what
// the full validator says, word for word.
func FuzzFastPath(f *testing.F) {
	for i := range flatSchemes {
		for _, doc := range []string{`{}`, `{"region":"eu","site":"eu-site-1","model":"m3"}`, `{"floor":3,"ratio":0.25,"level":2.5}`,
			`{"name":"grüße","undeclared":true,"either":7}`, `{"a":[1,{"b":null}]}`, `{"region":"e\u0075"}`, ` {"n":-0.0e-0} `} {
			f.Add(uint8(i), []byte(doc))
		}
	}
	schemes := make([]*Scheme, len(flatSchemes))
	for i, doc := range flatSchemes {
		schemes[i] = compileT(f, doc)
	}
	f.Fuzz(func(t *testing.T, which uint8, doc []byte) {
		s := schemes[int(which)%len(schemes)]
		full := validateDoc("tags", s.tags, doc)
		if s.fast.valid(doc) && full != nil {
			t.Fatalf("scheme %d: the fast path accepted %q, the full validator refuses it: %v", int(which)%len(schemes), doc, full)
		}
		got := s.ValidateTags(doc)
		if (got == nil) != (full == nil) || got != nil && got.Error() != full.Error() {
			t.Fatalf("scheme %d, %q: ValidateTags says %v, the full validator %v", int(which)%len(schemes), doc, got, full)
		}
	})
}

func BenchmarkFastPath(b *testing.B) {
	s := compileT(b, flatSchemes[0])
	doc := []byte(`{"region":"eu","site":"eu-site-123","model":"m3"}`)
	b.ReportAllocs()
	for b.Loop() {
		if !s.fast.valid(doc) {
			b.Fatal("refused")
		}
	}
}
