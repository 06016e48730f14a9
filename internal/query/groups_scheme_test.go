package query

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// vocab is a scheme as the compiler sees it: declared tag paths with their types.
type vocab map[string][]string

func (v vocab) Covers(path string) bool { return strings.HasPrefix(path, "tags") }

func (v vocab) Lookup(path string) ([]string, bool) {
	t, ok := v[path]
	return t, ok
}

func (v vocab) Suggest(path string) string {
	if path == "tags.regoin" {
		return "tags.region"
	}
	return ""
}

var siteVocab = vocab{
	"tags.region": {"string"}, "tags.floor": {"integer"}, "tags.ratio": {"integer", "number"},
	"tags.serial": {"string"}, "tags.indoor": {"boolean"}, "tags.any": nil,
}

func TestTypedComparisonAndWarnings(t *testing.T) {
	for _, c := range []struct {
		name, q  string
		sql      string
		args     []any
		warnings []string
	}{
		{
			name:     "a quoted number is compared as the integer the scheme declares",
			q:        "SELECT * FROM devices WHERE tags.floor = '3'",
			sql:      star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
			args:     []any{`{"floor":3}`},
			warnings: []string{"tags.floor is an integer in the scheme: string '3' compared as 3"},
		},
		{
			name: "ordering comparisons too, and IN lists",
			q:    "SELECT * FROM devices WHERE tags.floor >= '2' AND tags.floor IN ('4', 5)",
			sql: star + " WHERE (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN (tags #>> $1::text[])::numeric END) >= $3::numeric" +
				" AND (tags @> $4::jsonb OR tags @> $5::jsonb) AND status <> 'retired'",
			args: []any{[]string{"floor"}, "number", "2", `{"floor":4}`, `{"floor":5}`},
			warnings: []string{"tags.floor is an integer in the scheme: string '2' compared as 2",
				"tags.floor is an integer in the scheme: string '4' compared as 4"},
		},
		{
			name:     "integer or number is a number",
			q:        "SELECT * FROM devices WHERE tags.ratio = '0.50'",
			sql:      star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
			args:     []any{`{"ratio":0.5}`},
			warnings: []string{"tags.ratio is a number in the scheme: string '0.50' compared as 0.5"},
		},
		{
			name:     "an unquoted number is compared as the string the scheme declares",
			q:        "SELECT * FROM devices WHERE tags.serial = 12345",
			sql:      star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
			args:     []any{`{"serial":"12345"}`},
			warnings: []string{"tags.serial is a string in the scheme: number 12345 compared as '12345'"},
		},
		{
			name:     "a quoted boolean",
			q:        "SELECT * FROM devices WHERE tags.indoor = 'true'",
			sql:      star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
			args:     []any{`{"indoor":true}`},
			warnings: []string{"tags.indoor is a boolean in the scheme: string 'true' compared as true"},
		},
		{
			name: "text that is no value of the type is left as written",
			q:    "SELECT * FROM devices WHERE tags.floor = 'ground'",
			sql:  star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
			args: []any{`{"floor":"ground"}`},
		},
		{
			name: "a path of any type, or the right type, is not touched",
			q:    "SELECT * FROM devices WHERE tags.any = '3' AND tags.floor = 3",
			sql:  star + " WHERE tags @> $1::jsonb AND tags @> $2::jsonb AND status <> 'retired'",
			args: []any{`{"any":"3"}`, `{"floor":3}`},
		},
		{
			name:     "an unknown path warns with the nearest known one",
			q:        "SELECT * FROM devices WHERE tags.regoin = 'eu' OR tags.zzz = 1",
			sql:      star + " WHERE (tags @> $1::jsonb OR tags @> $2::jsonb) AND status <> 'retired'",
			args:     []any{`{"regoin":"eu"}`, `{"zzz":1}`},
			warnings: []string{"tags.regoin is not in the scheme; did you mean tags.region?", "tags.zzz is not in the scheme"},
		},
		{
			name:     "selected paths are checked too, once each",
			q:        "SELECT tags.regoin, COUNT() FROM devices GROUP BY tags.regoin",
			sql:      "SELECT tags #> $1::text[] AS c1, count(*) AS c2 FROM devices WHERE status <> 'retired' GROUP BY tags #> $1::text[]",
			args:     []any{[]string{"regoin"}},
			warnings: []string{"tags.regoin is not in the scheme; did you mean tags.region?"},
		},
		{
			name: "the scheme says nothing about desired properties",
			q:    "SELECT * FROM devices WHERE properties.desired.floor = '3'",
			sql:  star + " WHERE desired @> $1::jsonb AND status <> 'retired'",
			args: []any{`{"floor":"3"}`},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Compile(c.q, Options{Vocabulary: siteVocab})
			require.NoError(t, err)
			require.Equal(t, c.sql, got.SQL)
			require.Equal(t, c.args, got.Args)
			require.Equal(t, c.warnings, got.Warnings)
		})
	}
	// Without a scheme, nothing is converted and nothing is said.
	got, err := Compile("SELECT * FROM devices WHERE tags.floor = '3'", Options{})
	require.NoError(t, err)
	require.Equal(t, []any{`{"floor":"3"}`}, got.Args)
	require.Empty(t, got.Warnings)
}

func TestInGroup(t *testing.T) {
	dyn := func(q string) GroupDef {
		p, err := Parse(q)
		require.NoError(t, err)
		return GroupDef{Where: p.Where}
	}
	groups := map[string]GroupDef{
		"eu":     dyn("SELECT * FROM devices WHERE tags.region = 'eu' OR tags.region = 'uk'"),
		"lab":    {Static: true},
		"eu-lab": dyn("SELECT * FROM devices WHERE IN_GROUP('eu') AND IN_GROUP('lab')"),
		"all":    {},
		"loop":   dyn("SELECT * FROM devices WHERE IN_GROUP('loop2')"),
		"loop2":  dyn("SELECT * FROM devices WHERE IN_GROUP('loop')"),
	}
	for _, c := range []struct {
		name, q string
		sql     string
		args    []any
		groups  []string
	}{
		{
			name:   "a dynamic group is its condition, in place",
			q:      "SELECT * FROM devices WHERE IN_GROUP('eu') AND tags.floor = 3",
			sql:    "SELECT id FROM devices WHERE (tags @> $1::jsonb OR tags @> $2::jsonb) AND tags @> $3::jsonb AND status <> 'retired'",
			args:   []any{`{"region":"eu"}`, `{"region":"uk"}`, `{"floor":3}`},
			groups: []string{"eu"},
		},
		{
			name:   "a static group is its member rows; the name is a parameter",
			q:      "SELECT * FROM devices WHERE in_group('lab')",
			sql:    "SELECT id FROM devices WHERE id IN (SELECT device_id FROM device_group_members WHERE group_name = $1::text) AND status <> 'retired'",
			args:   []any{"lab"},
			groups: []string{"lab"},
		},
		{
			name:   "negation goes through a group like through any condition",
			q:      "SELECT * FROM devices WHERE NOT IN_GROUP('eu') AND NOT IN_GROUP('lab')",
			sql:    "SELECT id FROM devices WHERE (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN tags #>> $1::text[] END) <> $3::text AND (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN tags #>> $1::text[] END) <> $4::text AND id NOT IN (SELECT device_id FROM device_group_members WHERE group_name = $5::text) AND status <> 'retired'",
			args:   []any{[]string{"region"}, "string", "eu", "uk", "lab"},
			groups: []string{"eu", "lab"},
		},
		{
			name:   "groups of groups are recorded, every one",
			q:      "SELECT * FROM devices WHERE IN_GROUP('eu-lab')",
			sql:    "SELECT id FROM devices WHERE (tags @> $1::jsonb OR tags @> $2::jsonb) AND id IN (SELECT device_id FROM device_group_members WHERE group_name = $3::text) AND status <> 'retired'",
			args:   []any{`{"region":"eu"}`, `{"region":"uk"}`, "lab"},
			groups: []string{"eu", "eu-lab", "lab"},
		},
		{
			name:   "a dynamic group without a condition is every device",
			q:      "SELECT * FROM devices WHERE IN_GROUP('all')",
			sql:    "SELECT id FROM devices WHERE TRUE AND status <> 'retired'",
			groups: []string{"all"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Compile(c.q, Options{Targets: true, Groups: groups})
			require.NoError(t, err)
			require.Equal(t, c.sql, got.SQL)
			require.Equal(t, c.args, got.Args)
			require.Equal(t, c.groups, got.Groups)
		})
	}
	for q, want := range map[string]string{
		"SELECT * FROM devices WHERE IN_GROUP('nope')": "invalid query at position 29: unknown group 'nope' (fleetflow group list shows the groups)",
		"SELECT * FROM devices WHERE IN_GROUP('loop')": "group 'loop': group 'loop2': invalid query at position 29: group 'loop' names itself through loop → loop2",
		"SELECT * FROM devices WHERE IN_GROUP(lab)":    "syntax error at position 38: expected a group name as a 'string', as in IN_GROUP('lab') after '(', found 'lab'",
	} {
		_, err := Compile(q, Options{Targets: true, Groups: groups})
		require.EqualError(t, err, want, q)
	}
	p, err := Parse("SELECT * FROM devices WHERE IN_GROUP('a') OR (NOT IN_GROUP('b') AND IN_GROUP('a'))")
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, GroupNames(p.Where))
}
