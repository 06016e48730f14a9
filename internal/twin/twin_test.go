package twin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestApplyMergePatch(t *testing.T) {
	// Cases from RFC 7386 appendix A plus nesting that twins rely on.
	for _, c := range []struct{ name, doc, patch, want string }{
		{"replace", `{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{"add", `{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{"delete", `{"a":"b"}`, `{"a":null}`, `{}`},
		{"delete one of two", `{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{"array replaces", `{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{"value becomes array", `{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{"nested merge and delete", `{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{"arrays are atomic", `{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{"scalar becomes object", `{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{"deleting a missing key", `{}`, `{"x":null}`, `{}`},
		{"deep create", `{}`, `{"firmware":{"version":"1.2.0","slot":{"a":true}}}`, `{"firmware":{"slot":{"a":true},"version":"1.2.0"}}`},
		{"numbers keep precision", `{}`, `{"n":12345678901234567890}`, `{"n":12345678901234567890}`},
		{"empty doc", ``, `{"a":1}`, `{"a":1}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Apply(Reported, []byte(c.doc), []byte(c.patch))
			require.NoError(t, err)
			require.JSONEq(t, c.want, string(got))
		})
	}
}

func TestApplyRejectsBadPatches(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 11) + `1` + strings.Repeat(`}`, 11)
	okDeep := strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10)
	bigString := `{"s":"` + strings.Repeat("x", MaxStringBytes+1) + `"}`
	bigKey := `{"` + strings.Repeat("k", MaxKeyBytes+1) + `":1}`
	for _, c := range []struct {
		name, patch string
		limit       string // LimitError.What, or "" for ErrInvalidJSON
	}{
		{"not json", `{"a":`, ""},
		{"array", `[1,2]`, ""},
		{"string", `"x"`, ""},
		{"trailing", `{"a":1} {"b":2}`, ""},
		{"dollar key", `{"$version":3}`, ""},
		{"empty key", `{"":1}`, ""},
		{"invalid utf-8", "{\"a\":\"\xff\"}", ""},
		{"nul", `{"a":"x\u0000y"}`, ""},
		{"too deep", deep, "depth"},
		{"string too long", bigString, "string length"},
		{"key too long", bigKey, "key length"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Apply(Desired, []byte(`{}`), []byte(c.patch))
			require.Error(t, err)
			var le *LimitError
			if c.limit == "" {
				require.True(t, errors.Is(err, ErrInvalidJSON), "want ErrInvalidJSON, got %v", err)
			} else {
				require.True(t, errors.As(err, &le), "want LimitError, got %v", err)
				require.Equal(t, c.limit, le.What)
				require.Contains(t, err.Error(), "desired")
			}
		})
	}
	_, err := Apply(Desired, []byte(`{}`), []byte(okDeep))
	require.NoError(t, err, "depth 10 is within the limit")
}

func TestSectionSizeLimits(t *testing.T) {
	value := strings.Repeat("v", 4000)
	doc := []byte(`{}`)
	var err error
	// Tags stop at 8 KB: the third 4 KB value breaks it.
	for i := 0; i < 3 && err == nil; i++ {
		var next []byte
		next, err = Apply(Tags, doc, []byte(`{"k`+string(rune('a'+i))+`":"`+value+`"}`))
		if err == nil {
			doc = next
		}
	}
	var le *LimitError
	require.True(t, errors.As(err, &le))
	require.Equal(t, "size", le.What)
	require.Equal(t, MaxTagsBytes, le.Limit)
	require.Greater(t, le.Actual, MaxTagsBytes)
	// The failed patch left the document as it was.
	var m map[string]any
	require.NoError(t, json.Unmarshal(doc, &m))
	require.Len(t, m, 2)

	// Reported allows 32 KB.
	doc = []byte(`{}`)
	for i := 0; i < 7; i++ {
		doc, err = Apply(Reported, doc, []byte(`{"k`+string(rune('a'+i))+`":"`+value+`"}`))
		require.NoError(t, err)
	}
	_, err = Apply(Reported, doc, []byte(`{"z1":"`+value+`","z2":"`+value+`"}`))
	require.True(t, errors.As(err, &le))
	require.Equal(t, MaxReportedBytes, le.Limit)
}

func TestValidateDocument(t *testing.T) {
	require.NoError(t, Validate(Tags, []byte(`{"region":"eu","floor":3}`)))
	require.ErrorIs(t, Validate(Tags, []byte(`{"region":null}`)), ErrInvalidJSON)
	require.ErrorIs(t, Validate(Tags, []byte(`[]`)), ErrInvalidJSON)
}

func TestValidateID(t *testing.T) {
	for id, ok := range map[string]bool{
		"dev-0001": true, "a": true, "0.sensor_x": true, strings.Repeat("a", 64): true,
		"": false, "Dev": false, "-lead": false, "a/b": false, "a+b": false, "a#": false, "a b": false,
		strings.Repeat("a", 65): false, "dév": false, "inline": false,
	} {
		err := ValidateID(id)
		if ok {
			require.NoError(t, err, id)
		} else {
			require.ErrorIs(t, err, ErrInvalidID, id)
		}
	}
}

func TestVersionedDocumentJSON(t *testing.T) {
	v := VersionedDocument{Doc: []byte(`{"a":1}`), Version: 7}
	b, err := json.Marshal(v)
	require.NoError(t, err)
	require.JSONEq(t, `{"$version":7,"a":1}`, string(b))
	var back VersionedDocument
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, int64(7), back.Version)
	require.JSONEq(t, `{"a":1}`, string(back.Doc))
	b, err = json.Marshal(VersionedDocument{Version: 1})
	require.NoError(t, err)
	require.JSONEq(t, `{"$version":1}`, string(b))
}

func TestETagChangesWithOperatorSections(t *testing.T) {
	require.NotEqual(t, ETag(1, 1), ETag(1, 2))
	require.NotEqual(t, ETag(2, 1), ETag(1, 2))
	require.Equal(t, ETag(3, 4), ETag(3, 4))
}

// slowValidate is Validate without its fast path.
func slowValidate(s Section, doc []byte) error {
	m, err := ParseObject(s, doc)
	if err != nil {
		return err
	}
	if p := findNull(m, ""); p != "" {
		return ErrInvalidJSON
	}
	_, err = Encode(s, m)
	return err
}

func TestFastDocumentCheckNeverAcceptsWhatTheFullCheckRefuses(t *testing.T) {
	for _, doc := range validateSeeds() {
		if documentWithinLimits(Tags, []byte(doc)) {
			require.NoError(t, slowValidate(Tags, []byte(doc)), doc)
		}
	}
}

func validateSeeds() []string {
	return []string{`{}`, `{"a":1}`, `"str"`, `[1]`, `{"a":null}`, `{"a":{"b":[1,2,{"c":"d"}]}}`, `{"$x":1}`, `{"":1}`,
		`{"a\u0041":1}`, `{"a":"\u2028"}`, `{"a":"x"} `, ` {"a":true,"b":false,"c":-1.5e3}`, `{"a":1}{}`, `1`, `null`,
		`{"a":"` + strings.Repeat("x", MaxStringBytes) + `"}`, `{"a":"` + strings.Repeat("x", MaxStringBytes+1) + `"}`,
		strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10), strings.Repeat(`{"a":`, 11) + `1` + strings.Repeat(`}`, 11),
		`{"a":[` + strings.Repeat(`[`, 9) + strings.Repeat(`]`, 9) + `]}`, `{"k":"` + strings.Repeat("v", 8180) + `"}`,
		`{"a":"` + strings.Repeat("<", 4000) + `","b":"` + strings.Repeat("&", 4000) + `"}`}
}

func FuzzValidate(f *testing.F) {
	for _, s := range validateSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		for _, s := range []Section{Tags, Reported} {
			if documentWithinLimits(s, []byte(doc)) {
				if err := slowValidate(s, []byte(doc)); err != nil {
					t.Fatalf("fast check accepted %q, full check says %v", doc, err)
				}
			}
		}
	})
}

func TestValidateRefusesWhatPostgresCannotStore(t *testing.T) {
	require.ErrorIs(t, Validate(Tags, []byte("{\"a\":\"\xff\"}")), ErrInvalidJSON)
	require.ErrorIs(t, Validate(Tags, []byte(`{"a":"x\u0000y"}`)), ErrInvalidJSON)
	require.NoError(t, Validate(Tags, []byte(`{"a":"grüße"}`)))
}

// FuzzApply checks every twin writer's patch path on arbitrary patches to valid stored documents: Apply never
// panics, what it returns is a valid document of the section, applying the same patch again changes nothing
// (RFC 7386 merge patches are idempotent), and an empty patch leaves the document as it is.
func FuzzApply(f *testing.F) {
	seeds := validateSeeds()
	for i, s := range seeds {
		f.Add(seeds[(i+1)%len(seeds)], s)
	}
	f.Add(`{"a":{"b":1}}`, `{"a":{"b":null,"c":[null]}}`)
	f.Add(`{"a":1}`, `{"a":"\u0000"}`)
	f.Add(`{}`, "{\"a\":\"\xff\"}")
	f.Fuzz(func(t *testing.T, doc, patch string) {
		for _, s := range []Section{Tags, Desired, Reported} {
			if Validate(s, []byte(doc)) != nil {
				continue // stored documents are always valid
			}
			got, err := Apply(s, []byte(doc), []byte(patch))
			if err != nil {
				if got != nil {
					t.Fatalf("Apply returned %q with error %v", got, err)
				}
				continue
			}
			if err := Validate(s, got); err != nil {
				t.Fatalf("%s: Apply(%q, %q) = %q, which Validate refuses: %v", s, doc, patch, got, err)
			}
			again, err := Apply(s, got, []byte(patch))
			if err != nil || string(again) != string(got) {
				t.Fatalf("%s: applying %q twice: %q then %q (%v)", s, patch, got, again, err)
			}
			same, err := Apply(s, got, []byte(`{}`))
			if err != nil || string(same) != string(got) {
				t.Fatalf("%s: an empty patch changed %q into %q (%v)", s, got, same, err)
			}
		}
	})
}
