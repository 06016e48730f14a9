package scheme_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/scheme"
)

// sites is a realistic scheme: what an operator planning sites, floors and models would write.
const sites = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "region": {"enum": ["eu", "us", "apac"]},
    "site": {"type": "string", "pattern": "^site-[0-9]+$"},
    "floor": {"type": "integer", "minimum": 0},
    "model": {"type": "string"},
    "ring": {"$ref": "#/$defs/ring"},
    "location": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "weird key": {"type": "boolean"}
  },
  "required": ["region", "site"],
  "$defs": {"ring": {"type": "string", "enum": ["canary", "main"]}}
}`

func mustCompile(t *testing.T) *scheme.Scheme {
	t.Helper()
	s, err := scheme.Compile(3, []byte(sites), []byte(`{"type":"object","properties":{"firmware":{"type":"object","properties":{"version":{"type":"string"}}}}}`))
	require.NoError(t, err)
	return s
}

func TestPathExtraction(t *testing.T) {
	s := mustCompile(t)
	require.Equal(t, []string{"tags.floor", "tags.labels", "tags.location", "tags.location.lat", "tags.location.lon",
		"tags.model", "tags.region", "tags.ring", "tags.site", "tags['weird key']"}, s.TagPaths())
	for _, c := range []struct {
		path  string
		known bool
		types []string
	}{
		{"tags.floor", true, []string{"integer"}},
		{"tags.ring", true, []string{"string"}}, // through $ref
		{"tags.region", true, nil},              // an enum without a type
		{"tags.location.lat", true, []string{"number"}},
		{"tags.labels.anything", true, nil}, // below a map
		{"tags.labels['with space']", true, nil},
		{"tags.regoin", false, nil},
		{"tags.location.alt", false, nil},
		{"properties.reported.firmware.version", true, []string{"string"}},
	} {
		types, ok := s.Lookup(c.path)
		require.Equal(t, c.known, ok, c.path)
		require.Equal(t, c.types, types, c.path)
	}
	require.True(t, s.Covers("tags.x"))
	require.True(t, s.Covers("properties.reported.x"))
	require.False(t, s.Covers("properties.desired.x"))
}

func TestSuggest(t *testing.T) {
	s := mustCompile(t)
	for _, c := range []struct{ in, want string }{
		{"tags.regoin", "tags.region"},
		{"tags.flor", "tags.floor"},
		{"tags.Floor", "tags.floor"},
		{"tags.location.latt", "tags.location.lat"},
		{"tags.completelydifferent", ""},
		{"tags.floor", ""}, // itself is no suggestion
	} {
		require.Equal(t, c.want, s.Suggest(c.in), c.in)
	}
	require.Equal(t, 0, scheme.Levenshtein("", ""))
	require.Equal(t, 3, scheme.Levenshtein("kitten", "sitting"))
	require.Equal(t, 2, scheme.Levenshtein("régoin", "région"))
}

func TestValidateTags(t *testing.T) {
	s := mustCompile(t)
	for _, c := range []struct {
		doc  string
		want []string // violations as operators read them; nil: valid
	}{
		{`{"region":"eu","site":"site-1","floor":3}`, nil},
		{`{"region":"eu","site":"site-1","floor":"3"}`, []string{"tags.floor: got string, want integer"}},
		{`{"region":"mars","site":"site-1"}`, []string{"tags.region: value must be one of 'eu', 'us', 'apac'"}},
		{`{"site":"site-1"}`, []string{"tags: missing property 'region'"}},
		{`{"region":"eu","site":"s1","floor":-1}`, []string{"tags.floor: minimum: got -1, want 0", "tags.site: '" + `s1' does not match pattern '^site-[0-9]+$'`}},
		{`{"region":"eu","site":"site-1","labels":{"a":1}}`, []string{"tags.labels.a: got number, want string"}},
		{`{"region":"eu","site":"site-1","weird key":"x"}`, []string{"tags['weird key']: got string, want boolean"}},
	} {
		err := s.ValidateTags([]byte(c.doc))
		if c.want == nil {
			require.NoError(t, err, c.doc)
			continue
		}
		require.ErrorIs(t, err, scheme.ErrViolation, c.doc)
		var se *scheme.Error
		require.True(t, errors.As(err, &se))
		var got []string
		for _, v := range se.Violations {
			got = append(got, v.String())
		}
		require.Equal(t, c.want, got, c.doc)
	}
	require.NoError(t, s.ValidateReported([]byte(`{"firmware":{"version":"1.2"}}`)))
	require.EqualError(t, s.ValidateReported([]byte(`{"firmware":{"version":12}}`)), "properties.reported.firmware.version: got number, want string")
}

func TestCheckTagsPatch(t *testing.T) {
	s := mustCompile(t)
	// A patch need not carry the required keys: the device's tags do.
	require.NoError(t, s.CheckTagsPatch([]byte(`{"floor": 4}`)))
	require.NoError(t, s.CheckTagsPatch([]byte(`{"floor": null}`)))
	require.EqualError(t, s.CheckTagsPatch([]byte(`{"floor": "4"}`)), "tags.floor: got string, want integer")
	require.EqualError(t, s.CheckTagsPatch([]byte(`{"ring": "beta", "floor": "4"}`)), "tags.floor: got string, want integer (and 1 more)")
}

func TestCompileRefuses(t *testing.T) {
	for _, doc := range []string{
		`not json`,
		`[1]`,
		`{"type": "string"}`,
		`{"$schema": "http://json-schema.org/draft-07/schema#"}`,
		`{"properties": {"a": {"$ref": "file:///etc/passwd"}}}`,
		`{"properties": {"a": {"$ref": "https://example.com/x.json"}}}`,
		`{"properties": {"a": {"type": "nosuchtype"}}}`,
	} {
		_, err := scheme.Compile(1, []byte(doc), nil)
		require.ErrorIs(t, err, scheme.ErrInvalidScheme, doc)
	}
}

// benchScheme is the provisioning benchmark's scheme (bench/provision_test.go): what a fleet of sites
// would declare.
const benchScheme = `{"type":"object","properties":{
  "region":{"enum":["eu","us","apac"]},
  "site":{"type":"string","pattern":"^(eu|us|apac)-site-[0-9]{1,4}$"},
  "model":{"type":"string","pattern":"^m[0-9]$"}},
  "required":["region","site","model"],"additionalProperties":false}`

func BenchmarkValidateTags(b *testing.B) {
	s, err := scheme.Compile(1, []byte(benchScheme), nil)
	require.NoError(b, err)
	doc := []byte(`{"model":"m3","region":"eu","site":"eu-site-123"}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.ValidateTags(doc); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMemoGivesTheSameVerdicts(t *testing.T) {
	s := mustCompile(t)
	m := s.NewMemo(2)
	for range 3 {
		for _, doc := range []string{`{"region":"eu","site":"site-1"}`, `{"region":"eu","site":"site-1","floor":"3"}`, `{"site":"site-2"}`} {
			want, got := s.ValidateTags([]byte(doc)), m.ValidateTags([]byte(doc))
			if want == nil {
				require.NoError(t, got, doc)
				continue
			}
			require.EqualError(t, got, want.Error(), doc)
		}
	}
	require.LessOrEqual(t, m.Len(), 2, "bounded")
}

func BenchmarkValidateTagsMemo(b *testing.B) {
	s, err := scheme.Compile(1, []byte(benchScheme), nil)
	require.NoError(b, err)
	m := s.NewMemo(10_000)
	doc := []byte(`{"model":"m3","region":"eu","site":"eu-site-123"}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.ValidateTags(doc); err != nil {
			b.Fatal(err)
		}
	}
}

// reportedScheme describes what the simulator's devices report (internal/simulator's capabilities, firmware,
// health and mirrored desired keys): the reported schema an operator of such a fleet would set.
const reportedScheme = `{"type":"object","properties":{
  "model":{"type":"string"},
  "firmware":{"type":"object","properties":{"version":{"type":"string","pattern":"^[0-9]+\\.[0-9]+\\.[0-9]+$"}},"required":["version"]},
  "health":{"type":"object","properties":{"status":{"enum":["ok","failing"]},"reason":{"type":"string"}},"required":["status"]},
  "hardware":{"type":"object","properties":{"rev":{"type":"string"},"cpu":{"type":"string"},"memoryKb":{"type":"integer","minimum":0}}},
  "sensors":{"type":"array","items":{"type":"string"}},
  "capabilities":{"$ref":"#/$defs/caps"},
  "telemetryInterval":{"type":"integer","minimum":1,"maximum":86400}},
  "allOf":[{"required":["firmware"]}],
  "$defs":{"caps":{"type":"object","properties":{"ota":{"type":"boolean"},"radio":{"enum":["wifi","lte-m","nb-iot","ethernet"]},
    "telemetryMinSeconds":{"type":"integer","minimum":1}},"required":["ota"]}}}`

func TestCheckReportedPatch(t *testing.T) {
	s, err := scheme.Compile(1, []byte(`{"type":"object"}`), []byte(reportedScheme))
	require.NoError(t, err)
	for _, c := range []struct {
		patch string
		want  string // "" valid
	}{
		// Only what the patch sets is checked: the keys the scheme requires live in the stored document.
		{`{"telemetryInterval": 30}`, ""},
		{`{"health": {"reason": null}}`, ""},
		{`{"firmware": {"version": "1.2.3"}}`, ""},
		{`{"capabilities": {"radio": "wifi"}}`, ""}, // required ota is the stored document's (through $ref)
		{`{"somethingNew": {"x": 1}}`, ""},          // the scheme leaves other keys open
		{`{"telemetryInterval": "30"}`, "properties.reported.telemetryInterval: got string, want integer"},
		{`{"telemetryInterval": 0}`, "properties.reported.telemetryInterval: minimum: got 0, want 1"},
		{`{"firmware": {"version": "one"}}`, `properties.reported.firmware.version: 'one' does not match pattern '^[0-9]+\\.[0-9]+\\.[0-9]+$'`},
		{`{"capabilities": {"radio": "5g"}}`, "properties.reported.capabilities.radio: value must be one of 'wifi', 'lte-m', 'nb-iot', 'ethernet'"},
		{`{"health": {"status": "meh", "reason": 3}}`, "properties.reported.health.reason: got number, want string (and 1 more)"},
		// Deleting what the scheme requires breaks every document it is merged into, through allOf, $ref
		// and nested objects alike.
		{`{"firmware": null}`, "properties.reported.firmware: deletes a required property"},
		{`{"health": {"status": null}}`, "properties.reported.health.status: deletes a required property"},
		{`{"capabilities": {"ota": null, "radio": 1}}`, "properties.reported.capabilities.ota: deletes a required property (and 1 more)"},
		{`{"model": null}`, ""},
	} {
		err := s.CheckReportedPatch([]byte(c.patch))
		if c.want == "" {
			require.NoError(t, err, c.patch)
			continue
		}
		require.ErrorIs(t, err, scheme.ErrViolation, c.patch)
		require.EqualError(t, err, c.want, c.patch)
	}
	// A scheme without a reported part refuses nothing.
	require.NoError(t, mustCompileTagsOnly(t).CheckReportedPatch([]byte(`{"firmware": null}`)))

	m := s.NewReportedPatchMemo(4)
	for range 2 {
		require.NoError(t, m.Check([]byte(`{"telemetryInterval": 30}`)))
		require.EqualError(t, m.Check([]byte(`{"telemetryInterval": "30"}`)), "properties.reported.telemetryInterval: got string, want integer")
	}
	require.Equal(t, 2, m.Len())
}

func mustCompileTagsOnly(t *testing.T) *scheme.Scheme {
	t.Helper()
	s, err := scheme.Compile(1, []byte(sites), nil)
	require.NoError(t, err)
	return s
}

func BenchmarkCheckReportedPatch(b *testing.B) {
	s, err := scheme.Compile(1, []byte(`{"type":"object"}`), []byte(reportedScheme))
	require.NoError(b, err)
	patch := []byte(`{"model":"th-100","firmware":{"version":"1.2.3"},"health":{"status":"ok"},"hardware":{"rev":"A","cpu":"rp2040","memoryKb":512},` +
		`"sensors":["temperature","humidity"],"capabilities":{"ota":true,"radio":"wifi","telemetryMinSeconds":10}}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.CheckReportedPatch(patch); err != nil {
			b.Fatal(err)
		}
	}
}

// A patch decoded as a gateway decodes it (json.Number) gets the verdict of its bytes, and a Memo fed from
// outside gives it back.
func TestCheckReportedPatchValue(t *testing.T) {
	s, err := scheme.Compile(1, []byte(`{"type":"object"}`), []byte(reportedScheme))
	require.NoError(t, err)
	for _, patch := range []string{`{"telemetryInterval": 30}`, `{"telemetryInterval": 3.5}`, `{"telemetryInterval": "30"}`, `{"firmware": null}`,
		`{"capabilities": {"ota": null, "radio": 1}}`, `{"health": {"reason": null}}`} {
		dec := json.NewDecoder(strings.NewReader(patch))
		dec.UseNumber()
		var v map[string]any
		require.NoError(t, dec.Decode(&v))
		want, got := s.CheckReportedPatch([]byte(patch)), s.CheckReportedPatchValue(v)
		if want == nil {
			require.NoError(t, got, patch)
			continue
		}
		require.EqualError(t, got, want.Error(), patch)
	}
	m := s.NewReportedPatchMemo(1)
	known, _ := m.Verdict([]byte(`{"a":1}`))
	require.False(t, known)
	m.Remember([]byte(`{"a":1}`), scheme.ErrViolation)
	known, err = m.Verdict([]byte(`{"a":1}`))
	require.True(t, known)
	require.ErrorIs(t, err, scheme.ErrViolation)
	m.Remember([]byte(`{"b":1}`), nil)
	require.Equal(t, 1, m.Len(), "bounded")
}
