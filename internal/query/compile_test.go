package query

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// star is the common prefix of SELECT * queries; the tables below spell out everything after it.
const star = "SELECT " + StarColumns + " FROM devices"

type compileCase struct {
	name string
	q    string
	opts Options
	sql  string
	args []any
}

// compileCases document the compilation: each query with the exact SQL and arguments it becomes. They also
// seed FuzzCompile.
var compileCases = []compileCase{
	{
		name: "a target query selects ids whatever it projects",
		q:    "SELECT * FROM devices WHERE tags.region = 'eu'",
		opts: Options{Targets: true},
		sql:  "SELECT id FROM devices WHERE tags @> $1::jsonb AND status <> 'retired'",
		args: []any{`{"region":"eu"}`},
	},
	{
		name: "a target query keeps TOP as the limit",
		q:    "SELECT TOP 5 deviceId FROM devices WHERE status = 'active'",
		opts: Options{Targets: true},
		sql:  "SELECT id FROM devices WHERE status = $1::text LIMIT $2::bigint",
		args: []any{"active", int64(5)},
	},
	{
		name: "selective tag equality is containment, answered by the GIN index",
		q:    "SELECT * FROM devices WHERE tags.region = 'eu'",
		sql:  star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
		args: []any{`{"region":"eu"}`},
	},
	{
		name: "nested tag equality with a number",
		q:    "SELECT * FROM devices WHERE tags.site.floor = 2",
		sql:  star + " WHERE tags @> $1::jsonb AND status <> 'retired'",
		args: []any{`{"site":{"floor":2}}`},
	},
	{
		name: "reported boolean equality",
		q:    "SELECT deviceId FROM devices WHERE properties.reported.charging = true",
		sql:  "SELECT id AS c1 FROM devices WHERE reported @> $1::jsonb AND status <> 'retired'",
		args: []any{`{"charging":true}`},
	},
	{
		name: "nested reported != compares strings only when the value is a string",
		q:    "SELECT * FROM devices WHERE properties.reported.firmware.version != '1.2.0'",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(reported #> $1::text[]) = $2::text THEN reported #>> $1::text[] END)" +
			" <> $3::text AND status <> 'retired'",
		args: []any{[]string{"firmware", "version"}, "string", "1.2.0"},
	},
	{
		name: "numeric comparison is guarded so a non-number never raises a cast error",
		q:    "SELECT * FROM devices WHERE properties.reported.battery < 20.5",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(reported #> $1::text[]) = $2::text THEN (reported #>> $1::text[])::numeric END)" +
			" < $3::numeric AND status <> 'retired'",
		args: []any{[]string{"battery"}, "number", "20.5"},
	},
	{
		name: "desired boolean inequality",
		q:    "SELECT * FROM devices WHERE properties.desired.telemetry.enabled <> false",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(desired #> $1::text[]) = $2::text THEN (desired #>> $1::text[])::boolean END)" +
			" <> $3::boolean AND status <> 'retired'",
		args: []any{[]string{"telemetry", "enabled"}, "boolean", false},
	},
	{
		name: "literal on the left is turned around",
		q:    "SELECT * FROM devices WHERE 10 <= properties.reported.temp",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(reported #> $1::text[]) = $2::text THEN (reported #>> $1::text[])::numeric END)" +
			" >= $3::numeric AND status <> 'retired'",
		args: []any{[]string{"temp"}, "number", "10"},
	},
	{
		name: "IN on a tag is an OR of containments",
		q:    "SELECT * FROM devices WHERE tags.region IN ('eu', 'us', 3)",
		sql:  star + " WHERE (tags @> $1::jsonb OR tags @> $2::jsonb OR tags @> $3::jsonb) AND status <> 'retired'",
		args: []any{`{"region":"eu"}`, `{"region":"us"}`, `{"region":3}`},
	},
	{
		name: "NOT IN on a tag requires a defined value of the same type",
		q:    "SELECT * FROM devices WHERE tags.region NOT IN ('eu', 'us')",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN tags #>> $1::text[] END) <> $3::text" +
			" AND (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN tags #>> $1::text[] END) <> $4::text" +
			" AND status <> 'retired'",
		args: []any{[]string{"region"}, "string", "eu", "us"},
	},
	{
		name: "IN on a text column is one array parameter",
		q:    "SELECT * FROM devices WHERE deviceId IN ('dev-1', 'dev-2')",
		sql:  star + " WHERE id = ANY($1::text[]) AND status <> 'retired'",
		args: []any{[]string{"dev-1", "dev-2"}},
	},
	{
		name: "NOT is pushed down: a missing region matches neither = nor NOT =",
		q:    "SELECT * FROM devices WHERE NOT tags.region = 'eu'",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN tags #>> $1::text[] END) <> $3::text" +
			" AND status <> 'retired'",
		args: []any{[]string{"region"}, "string", "eu"},
	},
	{
		name: "NOT over OR follows De Morgan",
		q:    "SELECT * FROM devices WHERE NOT (tags.a = 1 OR properties.reported.b > 2)",
		sql: star + " WHERE (CASE WHEN jsonb_typeof(tags #> $1::text[]) = $2::text THEN (tags #>> $1::text[])::numeric END) <> $3::numeric" +
			" AND (CASE WHEN jsonb_typeof(reported #> $4::text[]) = $2::text THEN (reported #>> $4::text[])::numeric END) <= $5::numeric" +
			" AND status <> 'retired'",
		args: []any{[]string{"a"}, "number", "1", []string{"b"}, "2"},
	},
	{
		name: "AND binds tighter than OR",
		q:    "SELECT * FROM devices WHERE tags.a = 1 OR tags.b = 2 AND tags.c = 3",
		sql:  star + " WHERE (tags @> $1::jsonb OR (tags @> $2::jsonb AND tags @> $3::jsonb)) AND status <> 'retired'",
		args: []any{`{"a":1}`, `{"b":2}`, `{"c":3}`},
	},
	{
		name: "parentheses override precedence",
		q:    "SELECT * FROM devices WHERE (tags.a = 1 OR tags.b = 2) AND tags.c = 3",
		sql:  star + " WHERE (tags @> $1::jsonb OR tags @> $2::jsonb) AND tags @> $3::jsonb AND status <> 'retired'",
		args: []any{`{"a":1}`, `{"b":2}`, `{"c":3}`},
	},
	{
		name: "IS_DEFINED and its negation",
		q:    "SELECT * FROM devices WHERE IS_DEFINED(properties.reported.battery) AND NOT is_defined(tags.owner)",
		sql:  star + " WHERE (reported #> $1::text[]) IS NOT NULL AND (tags #> $2::text[]) IS NULL AND status <> 'retired'",
		args: []any{[]string{"battery"}, []string{"owner"}},
	},
	{
		name: "IS_NULL is containment of a JSON null; NOT negates it (it is never undefined)",
		q:    "SELECT * FROM devices WHERE NOT IS_NULL(tags.owner)",
		sql:  star + " WHERE NOT (tags @> $1::jsonb) AND status <> 'retired'",
		args: []any{`{"owner":null}`},
	},
	{
		name: "equality with null",
		q:    "SELECT * FROM devices WHERE tags.owner = null OR tags.x != null",
		sql:  star + " WHERE (tags @> $1::jsonb OR FALSE) AND status <> 'retired'",
		args: []any{`{"owner":null}`},
	},
	{
		name: "STARTSWITH on the device id and on a JSON string",
		q:    "SELECT * FROM devices WHERE STARTSWITH(deviceId, 'pump-') AND STARTSWITH(tags.site, 'ber')",
		sql: star + " WHERE starts_with(id, $1::text) AND starts_with((CASE WHEN jsonb_typeof(tags #> $2::text[]) = $3::text" +
			" THEN tags #>> $2::text[] END), $4::text) AND status <> 'retired'",
		args: []any{"pump-", []string{"site"}, "string", "ber"},
	},
	{
		name: "a status predicate turns retired-hiding off",
		q:    "SELECT * FROM devices WHERE status = 'retired'",
		sql:  star + " WHERE status = $1::text",
		args: []any{"retired"},
	},
	{
		name: "status anywhere in WHERE turns retired-hiding off",
		q:    "SELECT * FROM devices WHERE tags.a = 1 OR status IN ('disabled', 'retired')",
		sql:  star + " WHERE tags @> $1::jsonb OR status = ANY($2::text[])",
		args: []any{`{"a":1}`, []string{"disabled", "retired"}},
	},
	{
		name: "no WHERE: retired devices are hidden",
		q:    "SELECT deviceId, status FROM devices",
		sql:  "SELECT id AS c1, status AS c2 FROM devices WHERE status <> 'retired'",
		args: nil,
	},
	{
		name: "connectionState is derived from online, with parameters for its words",
		q:    "SELECT deviceId, connectionState FROM devices WHERE connectionState = 'connected'",
		sql: "SELECT id AS c1, (CASE WHEN online THEN $1::text ELSE $2::text END) AS c2 FROM devices" +
			" WHERE (CASE WHEN online THEN $1::text ELSE $2::text END) = $1::text AND status <> 'retired'",
		args: []any{"connected", "disconnected"},
	},
	{
		name: "lastActivityTime compares as a timestamp",
		q:    "SELECT deviceId FROM devices WHERE lastActivityTime < '2024-05-01T12:00:00+02:00'",
		sql:  "SELECT id AS c1 FROM devices WHERE last_seen < $1::timestamptz AND status <> 'retired'",
		args: []any{"2024-05-01T10:00:00Z"},
	},
	{
		name: "versions compare as numbers",
		q:    "SELECT version, properties.desired.$version FROM devices WHERE properties.reported.$version >= 3 AND version > 1",
		sql: "SELECT twin_version AS c1, desired_version AS c2 FROM devices" +
			" WHERE reported_version >= $1::numeric AND twin_version > $2::numeric AND status <> 'retired'",
		args: []any{"3", "1"},
	},
	{
		name: "quoted keys and array indexes",
		q:    "SELECT tags['my key'] FROM devices WHERE tags.list[0] = 'a' AND tags['it''s'] = \"x\"",
		sql: "SELECT tags #> $1::text[] AS c1 FROM devices" +
			" WHERE (CASE WHEN jsonb_typeof(tags #> $2::text[]) = $3::text THEN tags #>> $2::text[] END) = $4::text" +
			" AND tags @> $5::jsonb AND status <> 'retired'",
		args: []any{[]string{"my key"}, []string{"list", "0"}, "string", "a", `{"it's":"x"}`},
	},
	{
		name: "GROUP BY a reported property with COUNT() AS n",
		q:    "SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model",
		sql: "SELECT reported #> $1::text[] AS c1, count(*) AS c2 FROM devices WHERE status <> 'retired'" +
			" GROUP BY reported #> $1::text[]",
		args: []any{[]string{"model"}},
	},
	{
		name: "GROUP BY two properties, ordered by an alias",
		q: "SELECT tags.region, connectionState AS state, COUNT() AS n FROM devices WHERE tags.kind = 'pump'" +
			" GROUP BY tags.region, connectionState ORDER BY n DESC, tags.region",
		sql: "SELECT tags #> $1::text[] AS c1, (CASE WHEN online THEN $2::text ELSE $3::text END) AS c2, count(*) AS c3" +
			" FROM devices WHERE tags @> $4::jsonb AND status <> 'retired'" +
			" GROUP BY tags #> $1::text[], (CASE WHEN online THEN $2::text ELSE $3::text END)" +
			" ORDER BY c3 DESC, tags #> $1::text[]",
		args: []any{[]string{"region"}, "connected", "disconnected", `{"kind":"pump"}`},
	},
	{
		name: "COUNT() without GROUP BY",
		q:    "SELECT COUNT() FROM devices WHERE tags.region = 'eu'",
		sql:  "SELECT count(*) AS c1 FROM devices WHERE tags @> $1::jsonb AND status <> 'retired'",
		args: []any{`{"region":"eu"}`},
	},
	{
		name: "TOP becomes LIMIT",
		q:    "SELECT TOP 10 deviceId FROM devices",
		sql:  "SELECT id AS c1 FROM devices WHERE status <> 'retired' LIMIT $1::bigint",
		args: []any{int64(10)},
	},
	{
		name: "TOP above MaxRows is capped",
		q:    "SELECT TOP 5000 deviceId FROM devices",
		opts: Options{MaxRows: 1000},
		sql:  "SELECT id AS c1 FROM devices WHERE status <> 'retired' LIMIT $1::bigint",
		args: []any{int64(1000)},
	},
	{
		name: "TOP below MaxRows is kept",
		q:    "select top 3 deviceId from DEVICES",
		opts: Options{MaxRows: 1000},
		sql:  "SELECT id AS c1 FROM devices WHERE status <> 'retired' LIMIT $1::bigint",
		args: []any{int64(3)},
	},
	{
		name: "MaxRows limits a query without TOP",
		q:    "SELECT * FROM devices",
		opts: Options{MaxRows: 500},
		sql:  star + " WHERE status <> 'retired' LIMIT $1::bigint",
		args: []any{int64(500)},
	},
	{
		name: "ORDER BY properties and columns",
		q:    "SELECT TOP 20 * FROM devices ORDER BY properties.reported.battery ASC, lastActivityTime DESC, deviceId",
		sql:  star + " WHERE status <> 'retired' ORDER BY reported #> $1::text[], last_seen DESC, id LIMIT $2::bigint",
		args: []any{[]string{"battery"}, int64(20)},
	},
}

func TestCompile(t *testing.T) {
	for _, tc := range compileCases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Compile(tc.q, tc.opts)
			require.NoError(t, err)
			assert.Equal(t, tc.sql, c.SQL)
			assert.Equal(t, tc.args, c.Args)
		})
	}
}

func TestCompileColumns(t *testing.T) {
	c, err := Compile("SELECT * FROM devices", Options{})
	require.NoError(t, err)
	assert.True(t, c.Star)
	assert.False(t, c.Aggregate)
	require.Len(t, c.Columns, 10)
	assert.Equal(t, Column{Name: "id", Kind: KindText}, c.Columns[0])
	assert.Equal(t, Column{Name: "tags", Kind: KindJSON}, c.Columns[4])
	assert.Equal(t, Column{Name: "twin_version", Kind: KindInt}, c.Columns[9])

	c, err = Compile("SELECT deviceId, properties.reported.model, tags.model, tags.x AS model, COUNT() AS n,"+
		" lastActivityTime, connectionState, properties.desired.$version, properties.reported FROM devices"+
		" GROUP BY deviceId, properties.reported.model, tags.model, tags.x, lastActivityTime, connectionState,"+
		" properties.desired.$version, properties.reported", Options{})
	require.NoError(t, err)
	assert.False(t, c.Star)
	assert.True(t, c.Aggregate)
	assert.Equal(t, []Column{
		{Name: "deviceId", Kind: KindText},
		{Name: "model", Kind: KindJSON},
		{Name: "model_2", Kind: KindJSON},
		{Name: "model_3", Kind: KindJSON},
		{Name: "n", Kind: KindInt},
		{Name: "lastActivityTime", Kind: KindTime},
		{Name: "connectionState", Kind: KindText},
		{Name: "$version", Kind: KindInt},
		{Name: "reported", Kind: KindJSON},
	}, c.Columns)

	c, err = Compile("SELECT COUNT() FROM devices", Options{})
	require.NoError(t, err)
	assert.True(t, c.Aggregate)
	assert.Equal(t, []Column{{Name: "count", Kind: KindInt}}, c.Columns)
}

func TestParseTree(t *testing.T) {
	q, err := Parse("SELECT TOP 7 tags.a AS x FROM devices WHERE NOT (tags.b = 'c' OR 1 < tags.d) AND tags.e NOT IN (1, true)" +
		" ORDER BY tags.a DESC")
	require.NoError(t, err)
	assert.Equal(t, int64(7), q.Top)
	require.Len(t, q.Select, 1)
	assert.Equal(t, "x", q.Select[0].Alias)
	assert.Equal(t, "tags.a", q.Select[0].Value.Path.String())
	and, ok := q.Where.(*And)
	require.True(t, ok)
	require.Len(t, and.Terms, 2)
	not, ok := and.Terms[0].(*Not)
	require.True(t, ok)
	or, ok := not.X.(*Or)
	require.True(t, ok)
	flipped := or.Terms[1].(*Comparison)
	assert.Equal(t, ">", flipped.Op)
	assert.Equal(t, Literal{Pos: 66, Kind: LitNumber, Text: "1"}, flipped.Literal)
	in := and.Terms[1].(*In)
	assert.True(t, in.Negated)
	assert.Len(t, in.List, 2)
	assert.True(t, q.OrderBy[0].Desc)
}

func TestCompileTargetsRefusesGroups(t *testing.T) {
	_, err := Compile("SELECT tags.region, COUNT() FROM devices GROUP BY tags.region", Options{Targets: true})
	var se *SemanticError
	require.ErrorAs(t, err, &se)
	assert.Contains(t, err.Error(), "selects devices, not groups")
}
