package scheme_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/scheme"
)

// windows declares a device's maintenance window and its time zone with fleetflow's formats, and a contact
// address with a standard format, which stays an annotation.
const windows = `{
  "type": "object",
  "properties": {
    "maintenance": {"type": "string", "format": "maintenance-window"},
    "tz": {"$ref": "#/$defs/zone"},
    "contact": {"type": "string", "format": "email"},
    "since": {"type": "string", "format": "date-time"}
  },
  "$defs": {"zone": {"type": "string", "format": "timezone"}}
}`

func TestWindowFormatsAreAsserted(t *testing.T) {
	s, err := scheme.Compile(1, []byte(windows), nil)
	require.NoError(t, err)
	for _, c := range []struct {
		doc  string
		path string // "" when the document satisfies the scheme
		rule string
	}{
		{`{"maintenance": "Sun 02:00-04:00", "tz": "Europe/Berlin"}`, "", ""},
		{`{"maintenance": "Mon-Fri 22:00-02:00; Sat 10:00-12:00", "tz": "UTC"}`, "", ""},
		{`{"maintenance": "Sunday 02:00-04:00"}`, "tags.maintenance", `unknown day "Sunday"`},
		{`{"maintenance": "Sun 2:00-4:00"}`, "tags.maintenance", "want HH:MM"},
		{`{"maintenance": ""}`, "tags.maintenance", "empty spec"},
		{`{"tz": "Europe/Berlln"}`, "tags.tz", `unknown time zone "Europe/Berlln"`},
		{`{"tz": "Local"}`, "tags.tz", `unknown time zone "Local"`},
		{`{"contact": "not an address", "since": "yesterday"}`, "", ""}, // standard formats stay annotations
	} {
		err := s.ValidateTags([]byte(c.doc))
		if c.path == "" {
			require.NoError(t, err, c.doc)
			continue
		}
		var se *scheme.Error
		require.True(t, errors.As(err, &se), "%s: %v", c.doc, err)
		require.Len(t, se.Violations, 1, c.doc)
		require.Equal(t, c.path, se.Violations[0].Path, c.doc)
		require.Contains(t, se.Violations[0].Rule, c.rule, c.doc)
	}
	// A tags patch is checked the same way: `twin set-tags` and tag jobs refuse a bad window.
	err = s.CheckTagsPatch([]byte(`{"maintenance": "Sun 02:00-25:00"}`))
	require.ErrorIs(t, err, scheme.ErrViolation)
	require.Contains(t, err.Error(), "tags.maintenance")
}

func TestTagsWithFormat(t *testing.T) {
	s, err := scheme.Compile(1, []byte(windows), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"maintenance"}, s.TagsWithFormat(scheme.FormatWindow))
	require.Equal(t, []string{"tz"}, s.TagsWithFormat(scheme.FormatTimezone), "through $ref")
	require.Empty(t, s.TagsWithFormat("uuid"))

	two, err := scheme.Compile(2, []byte(`{"type": "object", "allOf": [{"properties": {"mw": {"format": "maintenance-window"}}}],
		"properties": {"maintenance": {"format": "maintenance-window"}}}`), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"maintenance", "mw"}, two.TagsWithFormat(scheme.FormatWindow), "through allOf, sorted")
	require.Empty(t, mustCompile(t).TagsWithFormat(scheme.FormatWindow))
}
