// Package manifest reads device manifests (CSV with an id column and one tag per other column, or NDJSON
// objects {"id":..., "tags":{...}}) and generates test fleets. It never stops at a bad row: each row comes
// out either parsed or with the reason it could not be, so the good rows are still provisioned.
package manifest

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// Row is one manifest entry. Tags is a JSON object (the twin's initial tags); Err says why the row could not
// be parsed, in which case ID may be empty.
type Row struct {
	Line int64
	ID   string
	Tags json.RawMessage
	Err  string
	// Plain says the reader built Tags itself as a flat object of printable ASCII keys and values that need
	// no escaping, within every limit of a twin's tags (docs/architecture.md, "Data limits"): a document
	// twin.Validate accepts, which need not be parsed again to know it (a million rows would pay ~0.5 µs
	// each). Only the CSV reader sets it.
	Plain bool
}

// Reader yields manifest rows one at a time, so a million-row manifest streams without being held in memory.
type Reader interface {
	// Next returns the next row, or io.EOF after the last one. Other errors are I/O errors that end the read.
	Next() (Row, error)
}

// Format is a manifest format.
type Format string

// Supported formats.
const (
	CSV    Format = "csv"
	NDJSON Format = "ndjson"
)

// FormatOf guesses the format from a file name.
func FormatOf(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return CSV, nil
	case ".ndjson", ".jsonl", ".json":
		return NDJSON, nil
	}
	return "", fmt.Errorf("cannot tell the format of %s from its extension: use .csv or .ndjson (or --format)", path)
}

// NewReader returns a reader of r in format f. A UTF-8 byte-order mark, which spreadsheet programs put at the
// start of the CSV files they save, is skipped.
func NewReader(r io.Reader, f Format) (Reader, error) {
	r = skipBOM(r)
	switch f {
	case CSV:
		c, err := newCSV(r)
		if err != nil {
			return nil, err // not a nil *csvReader in a non-nil Reader
		}
		return c, nil
	case NDJSON:
		return &ndjsonReader{sc: newScanner(r)}, nil
	}
	return nil, fmt.Errorf("unknown manifest format %q (csv or ndjson)", f)
}

// utf8BOM is the UTF-8 encoding of U+FEFF, the byte-order mark.
const utf8BOM = "\xef\xbb\xbf"

// skipBOM returns r without a leading UTF-8 byte-order mark.
func skipBOM(r io.Reader) io.Reader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	if b, err := br.Peek(len(utf8BOM)); err == nil && string(b) == utf8BOM {
		_, _ = br.Discard(len(utf8BOM))
	}
	return br
}

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	return sc
}

type csvReader struct {
	r      *csv.Reader
	header []string
	idCol  int
	// kinds[i] is how column i's cells are written into the tags object: as JSON strings unless a metadata
	// scheme types the tag (TypeColumns).
	kinds []CellKind
	// plainKey[i]: column i's name is a key a Plain row may have (plainText, not starting with '$', within
	// twin.MaxKeyBytes).
	plainKey []bool
}

// CellKind is the JSON type a CSV column's cells are written as.
type CellKind int

// Cell kinds. A cell that is not a value of its column's kind is written as a string, which the scheme
// then refuses with its path and rule.
const (
	CellString  CellKind = iota
	CellInteger          // an integer: 42, -7
	CellNumber           // any JSON number: 1.5, 2e3
	CellBoolean          // true or false
)

// TypeColumns makes a CSV manifest write the cells of typed columns as JSON numbers or booleans: a CSV cell
// has no type, and a metadata scheme that declares tags.floor an integer would otherwise refuse every row
// (docs/architecture.md, "Metadata scheme"). kind is asked once per column, by its name. Other manifests
// (NDJSON carries its own types) are left as they are.
func TypeColumns(r Reader, kind func(column string) CellKind) {
	c, ok := r.(*csvReader)
	if !ok {
		return
	}
	c.kinds = make([]CellKind, len(c.header))
	for i, h := range c.header {
		if i != c.idCol {
			c.kinds[i] = kind(h)
		}
	}
}

// typedCell returns v as the JSON text of a value of kind k, and whether it is one: integers in canonical
// form ("007" is 7), numbers only when v is already a JSON number.
func typedCell(v string, k CellKind) (string, bool) {
	switch k {
	case CellInteger:
		n, err := strconv.ParseInt(v, 10, 64)
		return strconv.FormatInt(n, 10), err == nil
	case CellNumber:
		_, err := strconv.ParseFloat(v, 64)
		return v, err == nil && json.Valid([]byte(v))
	case CellBoolean:
		return v, v == "true" || v == "false"
	}
	return "", false
}

func newCSV(r io.Reader) (*csvReader, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = false
	header, err := cr.Read()
	if err == io.EOF {
		return nil, errors.New("manifest is empty: the first line must be a header with an id column")
	}
	if err != nil {
		return nil, fmt.Errorf("manifest header: %w", err)
	}
	c := &csvReader{r: cr, header: header, idCol: -1}
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		header[i] = h
		if h == "" {
			return nil, fmt.Errorf("manifest header: column %d has no name", i+1)
		}
		if seen[h] {
			return nil, fmt.Errorf("manifest header: column %q appears twice", h)
		}
		seen[h] = true
		if strings.EqualFold(h, "id") {
			c.idCol = i
		}
	}
	if c.idCol < 0 {
		return nil, fmt.Errorf("manifest header has no id column (found: %s)", strings.Join(header, ", "))
	}
	c.plainKey = make([]bool, len(header))
	for i, h := range header {
		c.plainKey[i] = plainText(h) && h[0] != '$' && len(h) <= twin.MaxKeyBytes
	}
	return c, nil
}

// Next implements Reader.
func (c *csvReader) Next() (Row, error) {
	for {
		rec, err := c.r.Read()
		if err == io.EOF {
			return Row{}, io.EOF
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			return Row{Line: int64(pe.StartLine), Err: fmt.Sprintf("malformed CSV: %v", pe.Err)}, nil
		}
		if err != nil {
			return Row{}, fmt.Errorf("read manifest: %w", err)
		}
		if blank(rec) {
			continue // a blank line, or one of empty cells (",,,") as spreadsheets leave at the end
		}
		// FieldPos panics unless the last Read returned a record, so it is asked only now.
		line, _ := c.r.FieldPos(0)
		row := Row{Line: int64(line)}
		if len(rec) != len(c.header) {
			row.Err = fmt.Sprintf("expected %d fields (%s), found %d", len(c.header), strings.Join(c.header, ","), len(rec))
			if c.idCol < len(rec) {
				row.ID = strings.TrimSpace(rec[c.idCol])
			}
			return storable(row), nil
		}
		// The tags object is written directly, in header order: a million rows through a map and
		// json.Marshal cost more than the rest of parsing.
		buf := make([]byte, 0, 16*len(rec))
		buf = append(buf, '{')
		plain := true
		for i, v := range rec {
			if i == c.idCol {
				row.ID = strings.TrimSpace(v)
				continue
			}
			if v = strings.TrimSpace(v); v != "" {
				if len(buf) > 1 {
					buf = append(buf, ',')
				}
				buf = appendJSONString(buf, c.header[i])
				buf = append(buf, ':')
				t, typed := "", false
				if c.kinds != nil {
					t, typed = typedCell(v, c.kinds[i])
				}
				if typed {
					buf = append(buf, t...)
				} else {
					buf = appendJSONString(buf, v)
					plain = plain && len(v) <= twin.MaxStringBytes && plainText(v)
				}
				plain = plain && c.plainKey[i]
			}
		}
		row.Tags = append(buf, '}')
		row.Plain = plain && len(row.Tags) <= twin.MaxTagsBytes
		if row.ID == "" {
			row.Err = "missing id"
		}
		return storable(row), nil
	}
}

// blank reports whether every field of a CSV record is empty or white space.
func blank(rec []string) bool {
	for _, f := range rec {
		if strings.TrimSpace(f) != "" {
			return false
		}
	}
	return true
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 is caught by storable, so bytes pass as they are.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// plainText reports whether s is non-empty printable ASCII that a JSON string holds as it is (no quote, no
// backslash): the text of a Plain row's keys and values.
func plainText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return s != ""
}

// storable marks a row Postgres could not stage as text (invalid UTF-8 or a NUL byte) as invalid, keeping a
// printable id for the report, so one bad row cannot fail the whole manifest's COPY.
func storable(r Row) Row {
	// The reason quotes the header, which may be as broken as the rows.
	r.Err = printable(r.Err)
	if utf8.ValidString(r.ID) && utf8.Valid(r.Tags) && strings.IndexByte(r.ID, 0) < 0 && bytes.IndexByte(r.Tags, 0) < 0 {
		return r
	}
	r.ID = printable(r.ID)
	r.Tags, r.Plain = json.RawMessage("{}"), false
	if r.Err == "" {
		r.Err = "not valid UTF-8 (or contains a NUL byte)"
	}
	return r
}

// printable returns s as Postgres can store it in a text column: valid UTF-8 without NUL bytes.
func printable(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "?")
}

type ndjsonReader struct {
	sc   *bufio.Scanner
	line int64
}

type ndjsonRow struct {
	ID   *string         `json:"id"`
	Tags json.RawMessage `json:"tags"`
}

// Next implements Reader.
func (n *ndjsonReader) Next() (Row, error) {
	for n.sc.Scan() {
		n.line++
		b := bytes.TrimSpace(n.sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
			return storable(Row{Line: n.line, ID: "", Tags: b}), nil
		}
		row := Row{Line: n.line}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var r ndjsonRow
		if err := dec.Decode(&r); err != nil {
			row.Err = fmt.Sprintf("invalid JSON: %v", err)
			return row, nil
		}
		if r.ID == nil {
			row.Err = `missing "id"`
			return row, nil
		}
		row.ID = *r.ID
		t := bytes.TrimSpace(r.Tags)
		switch {
		case row.ID == "":
			row.Err = `empty "id"`
		case len(t) == 0 || bytes.Equal(t, []byte("null")):
			row.Tags = json.RawMessage("{}")
		case t[0] != '{':
			row.Err = `"tags" must be a JSON object`
		default:
			row.Tags = json.RawMessage(t)
		}
		// A valid line can still decode to an id Postgres cannot stage ("\u0000" is a NUL byte).
		return storable(row), nil
	}
	if err := n.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Row{}, fmt.Errorf("manifest line %d is longer than 4 MiB", n.line+1)
		}
		return Row{}, fmt.Errorf("read manifest: %w", err)
	}
	return Row{}, io.EOF
}

// Generated yields count rows with ids prefix0001, prefix0002, ... (zero-padded to at least 4 digits so ids
// sort in order) and the same tags on each; it is how test fleets are made without a file.
type Generated struct {
	Prefix string
	Count  int64
	Start  int64
	Tags   map[string]string
	i      int64
	tags   json.RawMessage
	width  int
}

// Next implements Reader.
func (g *Generated) Next() (Row, error) {
	if g.i >= g.Count {
		return Row{}, io.EOF
	}
	if g.tags == nil {
		if g.Tags == nil {
			g.Tags = map[string]string{}
		}
		g.tags, _ = json.Marshal(g.Tags)
		g.width = max(4, len(fmt.Sprint(g.Start+g.Count)))
		if g.Start == 0 {
			g.Start = 1
		}
	}
	n := g.Start + g.i
	g.i++
	return Row{Line: g.i, ID: fmt.Sprintf("%s%0*d", g.Prefix, g.width, n), Tags: g.tags}, nil
}

// ParseTags parses k=v pairs (from repeated or comma-separated --tags flags).
func ParseTags(pairs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range pairs {
		for _, kv := range strings.Split(p, ",") {
			kv = strings.TrimSpace(kv)
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return nil, fmt.Errorf("tag %q: expected key=value", kv)
			}
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out, nil
}
