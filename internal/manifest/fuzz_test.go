package manifest

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// storableText reports whether Postgres can keep s in a text column: valid UTF-8 without a NUL byte. Staging
// copies every row, the bad ones too, so one row that is not would fail the whole manifest's COPY.
func storableText(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// checkRows reads r to the end and checks what every consumer of a Reader relies on: rows come in manifest
// order, each is either parsed (an id and a JSON object of tags) or carries a reason, and every field can be
// staged.
func checkRows(t *testing.T, r Reader, input []byte) {
	t.Helper()
	var last int64
	// A row consumes at least one byte of input, so more rows than bytes means the reader loops.
	for n := 0; ; n++ {
		if n > len(input)+1 {
			t.Fatalf("more rows than input bytes (%d): the reader does not advance", len(input))
		}
		row, err := r.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			return // an I/O error (a line over 4 MiB) ends the read, as documented
		}
		if row.Line < 1 || row.Line < last {
			t.Fatalf("row %+v: line %d after line %d", row, row.Line, last)
		}
		last = row.Line
		if !storableText(row.ID) || !storableText(row.Err) || !storableText(string(row.Tags)) {
			t.Fatalf("row at line %d cannot be staged: id %q, tags %q, err %q", row.Line, row.ID, row.Tags, row.Err)
		}
		if row.Err != "" {
			continue
		}
		if row.ID == "" {
			t.Fatalf("row at line %d parsed without an id", row.Line)
		}
		var tags map[string]any
		if err := json.Unmarshal(row.Tags, &tags); err != nil || tags == nil {
			t.Fatalf("row at line %d parsed with tags %q that are not a JSON object: %v", row.Line, row.Tags, err)
		}
		if row.Plain {
			// The CLI then skips twin.Validate: it must have nothing to say.
			if err := twin.Validate(twin.Tags, row.Tags); err != nil {
				t.Fatalf("row at line %d is Plain but its tags %q are refused: %v", row.Line, row.Tags, err)
			}
		}
	}
}

func manifestSeeds() []string {
	return []string{
		"id,region,site\ndev-1,eu,ber-1\ndev-2,us,\n\ndev-3,eu\n",
		"\xef\xbb\xbfid,region\r\ndev-1,\"eu, west\"\r\n,,\r\n\r\n",
		"ID;x\na;b\n", "region,id\n\"x\"\"y\",dev\n", "id\n\"unterminated\n", "id,a\nd\x00,\xff\n",
		`{"id":"dev-1","tags":{"region":"eu","floor":3}}` + "\n\n" + `{"id":"dev-2"}` + "\nnot json\n",
		`{"id":"a\u0000b"}`, `{"id":"x","tags":[1]}`, `{"id":"x","tags":null,"extra":1}`, `{"id":1}`, `{"id":"x","tags":{"a":"\u0000"}}`,
		"{\"id\":\"\xff\"}\n\x00\n",
	}
}

// FuzzCSV feeds arbitrary bytes to the CSV reader.
func FuzzCSV(f *testing.F) {
	for _, s := range manifestSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := NewReader(bytes.NewReader(in), CSV)
		if err != nil {
			if r != nil {
				t.Fatalf("NewReader returned a reader with error %v", err)
			}
			return
		}
		checkRows(t, r, in)
	})
}

// FuzzNDJSON feeds arbitrary bytes to the NDJSON reader.
func FuzzNDJSON(f *testing.F) {
	for _, s := range manifestSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := NewReader(bytes.NewReader(in), NDJSON)
		if err != nil {
			t.Fatalf("NewReader(NDJSON) refused a stream: %v", err)
		}
		checkRows(t, r, in)
	})
}
