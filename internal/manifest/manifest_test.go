package manifest

import (
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/twin"
)

func readAll(t *testing.T, r Reader) []Row {
	t.Helper()
	var out []Row
	for {
		row, err := r.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		out = append(out, row)
	}
}

func TestCSVRowsBecomeIDsAndTagsAndBadRowsCarryTheirLine(t *testing.T) {
	in := "id,region,site\n" +
		"dev-1,eu,ber-1\n" +
		"dev-2,us,\n" +
		"\n" +
		"dev-3,eu\n" +
		"dev-4,\"unterminated,x\n"
	r, err := NewReader(strings.NewReader(in), CSV)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 4)
	require.Equal(t, Row{Line: 2, ID: "dev-1", Tags: []byte(`{"region":"eu","site":"ber-1"}`), Plain: true}, rows[0])
	require.Equal(t, Row{Line: 3, ID: "dev-2", Tags: []byte(`{"region":"us"}`), Plain: true}, rows[1], "empty cells are not tags")
	require.Equal(t, int64(5), rows[2].Line)
	require.Equal(t, "dev-3", rows[2].ID)
	require.Contains(t, rows[2].Err, "expected 3 fields")
	require.Equal(t, int64(6), rows[3].Line)
	require.Contains(t, rows[3].Err, "malformed CSV")
}

// TestCSVPlainRows checks which rows the reader vouches for (Row.Plain: the CLI then skips twin.Validate):
// exactly those whose keys and values are printable ASCII needing no escape, within the twin's limits.
func TestCSVPlainRows(t *testing.T) {
	long := strings.Repeat("x", twin.MaxStringBytes)
	for _, c := range []struct {
		header, row string
		plain       bool
	}{
		{"id,region,floor", "d,eu,3", true},
		{"id,region", "d,", true}, // {}
		{"id,region", "d,\"e\"\"u\"", false},
		{"id,region", "d,e\\u", false},
		{"id,region", "d,grüße", false},
		{"id,$region", "d,eu", false},
		{"id,région", "d,eu", false},
		{"id,region", "d," + long, true},
		{"id,region", "d," + long + "x", false},
		{"id,a,b,c", "d," + long + "," + long + ",x", false}, // over twin.MaxTagsBytes in all
		{"id,a,b", "d,x,y,z", false},                         // the wrong number of fields: no tags at all
	} {
		r, err := NewReader(strings.NewReader(c.header+"\n"+c.row+"\n"), CSV)
		require.NoError(t, err)
		rows := readAll(t, r)
		require.Len(t, rows, 1)
		require.Equal(t, c.plain, rows[0].Plain, "%s / %.40s", c.header, c.row)
		if rows[0].Plain {
			require.NoError(t, twin.Validate(twin.Tags, rows[0].Tags))
		}
	}
	// Typed cells are written as numbers and booleans, plain as well.
	r, err := NewReader(strings.NewReader("id,floor,on\nd,7,true\n"), CSV)
	require.NoError(t, err)
	TypeColumns(r, func(col string) CellKind { return map[string]CellKind{"floor": CellInteger, "on": CellBoolean}[col] })
	rows := readAll(t, r)
	require.Equal(t, Row{Line: 2, ID: "d", Tags: []byte(`{"floor":7,"on":true}`), Plain: true}, rows[0])
}

func TestCSVHeaderProblemsAreErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":     "",
		"no id":     "name,region\nx,y\n",
		"duplicate": "id,region,region\n",
		"blank":     "id,,x\n",
	} {
		_, err := NewReader(strings.NewReader(in), CSV)
		require.Error(t, err, name)
	}
}

func TestNDJSONRows(t *testing.T) {
	in := `{"id":"dev-1","tags":{"region":"eu","floor":3}}
{"id":"dev-2"}

not json
{"id":"dev-4","tags":[1]}
{"id":"dev-5","tag":{"x":1}}
{"tags":{}}
`
	r, err := NewReader(strings.NewReader(in), NDJSON)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 6)
	require.Equal(t, Row{Line: 1, ID: "dev-1", Tags: []byte(`{"region":"eu","floor":3}`)}, rows[0])
	require.Equal(t, Row{Line: 2, ID: "dev-2", Tags: []byte(`{}`)}, rows[1])
	require.Equal(t, int64(4), rows[2].Line)
	require.Contains(t, rows[2].Err, "invalid JSON")
	require.Contains(t, rows[3].Err, "must be a JSON object")
	require.Contains(t, rows[4].Err, "unknown field", "a typo such as \"tag\" is reported, not ignored")
	require.Contains(t, rows[5].Err, `missing "id"`)
}

func TestGeneratedFleet(t *testing.T) {
	g := &Generated{Prefix: "sim-", Count: 3, Tags: map[string]string{"region": "eu"}}
	rows := readAll(t, g)
	require.Equal(t, []Row{
		{Line: 1, ID: "sim-0001", Tags: []byte(`{"region":"eu"}`)},
		{Line: 2, ID: "sim-0002", Tags: []byte(`{"region":"eu"}`)},
		{Line: 3, ID: "sim-0003", Tags: []byte(`{"region":"eu"}`)},
	}, rows)
	big := &Generated{Prefix: "d", Count: 100000}
	first, _ := big.Next()
	require.Equal(t, "d000001", first.ID, "width grows with the count so ids sort")
}

func TestParseTags(t *testing.T) {
	m, err := ParseTags([]string{"region=eu,site=ber-1", "model = x1"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"region": "eu", "site": "ber-1", "model": "x1"}, m)
	_, err = ParseTags([]string{"novalue"})
	require.ErrorContains(t, err, "expected key=value")
}

func TestFormatOf(t *testing.T) {
	f, err := FormatOf("a/devices.CSV")
	require.NoError(t, err)
	require.Equal(t, CSV, f)
	f, err = FormatOf("x.jsonl")
	require.NoError(t, err)
	require.Equal(t, NDJSON, f)
	_, err = FormatOf("x.txt")
	require.Error(t, err)
}

func TestRowsPostgresCannotStageBecomeInvalidRows(t *testing.T) {
	in := "id,note\ndev-1,\"ok \"\"quoted\"\" \\ back\"\ndev-2,bad \xff byte\n"
	r, err := NewReader(strings.NewReader(in), CSV)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 2)
	require.JSONEq(t, `{"note":"ok \"quoted\" \\ back"}`, string(rows[0].Tags))
	require.Equal(t, "", rows[0].Err)
	require.Contains(t, rows[1].Err, "UTF-8")
	require.Equal(t, "{}", string(rows[1].Tags))

	nd, err := NewReader(strings.NewReader("{\"id\":\"x\xfe\"}\n"), NDJSON)
	require.NoError(t, err)
	rows = readAll(t, nd)
	require.Len(t, rows, 1)
	require.Contains(t, rows[0].Err, "UTF-8")
}

// TestManifestsAsOperatorsMakeThem reads manifests the way spreadsheet programs and scripts write them.
func TestManifestsAsOperatorsMakeThem(t *testing.T) {
	type want struct {
		line int64
		id   string
		tags string // JSON, "" when the row is invalid
		err  string // substring of the reason, "" when valid
	}
	for _, tc := range []struct {
		name   string
		format Format
		in     string
		want   []want
	}{
		{"CSV with a byte-order mark", CSV, "\xef\xbb\xbfid,region\ndev-1,eu\n",
			[]want{{2, "dev-1", `{"region":"eu"}`, ""}}},
		{"CSV with CRLF line ends", CSV, "id,region\r\ndev-1,eu\r\ndev-2,us\r\n",
			[]want{{2, "dev-1", `{"region":"eu"}`, ""}, {3, "dev-2", `{"region":"us"}`, ""}}},
		{"CSV with BOM and CRLF and a quoted header", CSV, "\xef\xbb\xbf\"id\",\"site\"\r\n\"dev-1\",\"ber-1\"\r\n",
			[]want{{2, "dev-1", `{"site":"ber-1"}`, ""}}},
		{"quoted fields with commas and quotes", CSV, "id,address,note\ndev-1,\"Main St 1, Berlin\",\"say \"\"hi\"\"\"\n",
			[]want{{2, "dev-1", `{"address":"Main St 1, Berlin","note":"say \"hi\""}`, ""}}},
		{"trailing blank lines and empty-cell lines", CSV, "id,region\ndev-1,eu\n\n,\n , \n\r\n\n",
			[]want{{2, "dev-1", `{"region":"eu"}`, ""}}},
		{"an empty id is an invalid row with its line", CSV, "id,region\ndev-1,eu\n,us\n\"\",eu\ndev-4,eu\n",
			[]want{{2, "dev-1", `{"region":"eu"}`, ""}, {3, "", "", "missing id"}, {4, "", "", "missing id"},
				{5, "dev-4", `{"region":"eu"}`, ""}}},
		{"NDJSON with blank lines, CRLF and a BOM", NDJSON, "\xef\xbb\xbf{\"id\":\"dev-1\"}\r\n\r\n   \n{\"id\":\"dev-2\",\"tags\":{\"a\":\"b\"}}\r\n\n",
			[]want{{1, "dev-1", `{}`, ""}, {4, "dev-2", `{"a":"b"}`, ""}}},
		{"NDJSON with an empty id", NDJSON, "{\"id\":\"\"}\n{\"id\":\"dev-2\"}\n",
			[]want{{1, "", "", `empty "id"`}, {2, "dev-2", `{}`, ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader(tc.in), tc.format)
			require.NoError(t, err)
			rows := readAll(t, r)
			require.Len(t, rows, len(tc.want))
			for i, w := range tc.want {
				got := rows[i]
				require.Equal(t, w.line, got.Line, "row %d", i)
				require.Equal(t, w.id, got.ID, "row %d", i)
				if w.err != "" {
					require.Contains(t, got.Err, w.err, "row %d", i)
					continue
				}
				require.Empty(t, got.Err, "row %d", i)
				require.JSONEq(t, w.tags, string(got.Tags), "row %d", i)
			}
		})
	}
}

func TestTypeColumnsWritesTypedCells(t *testing.T) {
	r, err := NewReader(strings.NewReader("id,floor,ratio,indoor,site\nd1,3,0.5,true,ber\nd2,007,1e3,no,3\nd3,three,,false,x\n"), CSV)
	require.NoError(t, err)
	TypeColumns(r, func(col string) CellKind {
		return map[string]CellKind{"floor": CellInteger, "ratio": CellNumber, "indoor": CellBoolean}[col]
	})
	var got []string
	for {
		row, err := r.Next()
		if err != nil {
			break
		}
		got = append(got, string(row.Tags))
	}
	require.Equal(t, []string{
		`{"floor":3,"ratio":0.5,"indoor":true,"site":"ber"}`,
		`{"floor":7,"ratio":1e3,"indoor":"no","site":"3"}`,
		`{"floor":"three","indoor":false,"site":"x"}`, // not an integer: left a string for the scheme to refuse
	}, got)
}

// Found by FuzzCSV: a manifest whose first record after the header is malformed made the reader ask the CSV
// decoder for a field position it did not have, which panicked and killed provision.
func TestCSVMalformedFirstRecordIsAReportedRowNotAPanic(t *testing.T) {
	r, err := NewReader(strings.NewReader("id\n\"unterminated\n"), CSV)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 1)
	require.Equal(t, int64(2), rows[0].Line)
	require.Contains(t, rows[0].Err, "malformed CSV")
}

// Found by FuzzCSV: a refused header returned a nil *csvReader inside a non-nil Reader.
func TestRefusedCSVHeaderReturnsNoReader(t *testing.T) {
	r, err := NewReader(strings.NewReader("name\nx\n"), CSV)
	require.Error(t, err)
	require.Nil(t, r)
}

// Found by FuzzNDJSON: an id escaped as "\u0000" decodes to a NUL byte, which Postgres cannot stage as text,
// so the one row failed the whole manifest's COPY. It is now an invalid row reported by line.
func TestNDJSONIDWithNULIsAnInvalidRow(t *testing.T) {
	r, err := NewReader(strings.NewReader(`{"id":"ok"}`+"\n"+`{"id":"a\u0000b"}`+"\n"), NDJSON)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 2)
	require.Empty(t, rows[0].Err)
	require.Equal(t, "ab", rows[1].ID)
	require.NotEmpty(t, rows[1].Err)
}

// Found by FuzzCSV: a header cell that is not UTF-8 made every short row's reason (which quotes the header)
// unstageable, failing the whole manifest's COPY.
func TestReasonQuotingABrokenHeaderIsStageable(t *testing.T) {
	r, err := NewReader(strings.NewReader("id,\xc9\n0\n"), CSV)
	require.NoError(t, err)
	rows := readAll(t, r)
	require.Len(t, rows, 1)
	require.Contains(t, rows[0].Err, "expected 2 fields")
	require.True(t, storableText(rows[0].Err), rows[0].Err)
}
