// Package twin holds the device twin document model, RFC 7386 JSON merge patches and the size and shape
// limits (Azure's; docs/architecture.md, "Data limits") that every writer of tags, desired or reported
// properties must respect.
// It is pure Go so that the gateway, the registry and the CLI apply the same rules.
package twin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Section names one of the three documents of a twin.
type Section string

// The twin's sections.
const (
	Tags     Section = "tags"
	Desired  Section = "desired"
	Reported Section = "reported"
)

// Limits of docs/architecture.md, "Data limits": the same as Azure IoT Hub's so that users meet no surprise.
const (
	MaxTagsBytes     = 8 * 1024
	MaxDesiredBytes  = 32 * 1024
	MaxReportedBytes = 32 * 1024
	MaxDepth         = 10
	MaxKeyBytes      = 1024
	MaxStringBytes   = 4 * 1024
)

// MaxBytes returns the size limit of a section's document.
func MaxBytes(s Section) int {
	if s == Tags {
		return MaxTagsBytes
	}
	return MaxDesiredBytes
}

// reservedID is the embedded broker's own client id, so no device may have it.
const reservedID = protocol.ReservedID

// ErrInvalidID is returned for device ids outside the device-id pattern of docs/architecture.md, "The device protocol".
var ErrInvalidID = errors.New("invalid device id")

// ValidateID checks a device id against `[a-z0-9][a-z0-9._-]{0,63}`. It runs for every row of a
// million-row manifest and every CONNECT, so it is a byte loop rather than a regexp match.
func ValidateID(id string) error {
	if !validID(id) {
		if id == reservedID {
			return fmt.Errorf("%w %q: reserved by the gateway", ErrInvalidID, id)
		}
		return fmt.Errorf("%w %q: must match [a-z0-9][a-z0-9._-]{0,63}", ErrInvalidID, id)
	}
	return nil
}

// validID is the device protocol's rule, so that the registry, the CLI and the gateway agree on it.
func validID(id string) bool { return protocol.ValidDeviceID(id) }

// ErrInvalidJSON marks a document or patch that is not a JSON object.
var ErrInvalidJSON = errors.New("invalid JSON")

// LimitError says which limit a document or patch broke, and where.
type LimitError struct {
	Section Section
	Path    string // JSON path of the offending key or value, "" for the whole document
	What    string // "size", "depth", "key length", "string length"
	Limit   int
	Actual  int
}

// Error names the section, the path and the limit.
func (e *LimitError) Error() string {
	where := string(e.Section)
	if e.Path != "" {
		where += "." + e.Path
	}
	return fmt.Sprintf("%s: %s %d exceeds the limit of %d", where, e.What, e.Actual, e.Limit)
}

// Twin is a device's twin as the registry returns it; its JSON form follows Azure's twin document.
type Twin struct {
	DeviceID         string     `json:"deviceId"`
	ETag             string     `json:"etag"`
	Version          int64      `json:"version"`
	Status           string     `json:"status"`
	ConnectionState  string     `json:"connectionState"`
	LastActivityTime *time.Time `json:"lastActivityTime,omitempty"`
	Tags             Document   `json:"tags"`
	TagsVersion      int64      `json:"-"`
	Properties       Properties `json:"properties"`
}

// Properties are the desired and reported documents with their versions.
type Properties struct {
	Desired  VersionedDocument `json:"desired"`
	Reported VersionedDocument `json:"reported"`
}

// Document is a JSON object kept in its encoded form.
type Document = json.RawMessage

// VersionedDocument is a section document whose JSON form carries its version as "$version", as Azure's does.
type VersionedDocument struct {
	Doc     Document
	Version int64
}

// MarshalJSON inlines "$version" into the object.
func (v VersionedDocument) MarshalJSON() ([]byte, error) {
	doc := bytes.TrimSpace(v.Doc)
	if len(doc) == 0 {
		doc = []byte("{}")
	}
	if len(doc) < 2 || doc[0] != '{' {
		return nil, fmt.Errorf("%w: section is not an object", ErrInvalidJSON)
	}
	var b bytes.Buffer
	b.WriteString(`{"$version":`)
	b.WriteString(strconv.FormatInt(v.Version, 10))
	inner := bytes.TrimSpace(doc[1 : len(doc)-1])
	if len(inner) > 0 {
		b.WriteByte(',')
		b.Write(inner)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON splits "$version" from the object.
func (v *VersionedDocument) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if raw, ok := m["$version"]; ok {
		if err := json.Unmarshal(raw, &v.Version); err != nil {
			return fmt.Errorf("$version: %w", err)
		}
		delete(m, "$version")
	}
	doc, err := json.Marshal(m)
	if err != nil {
		return err
	}
	v.Doc = doc
	return nil
}

// ETag formats the twin's optimistic-concurrency tag from the versions of the sections operators write
// (tags and desired). Reported changes do not move it, so devices reporting telemetry-like state never make
// an operator's conditional write fail.
func ETag(tagsVersion, desiredVersion int64) string {
	return strconv.Quote(strconv.FormatInt(tagsVersion, 36) + "." + strconv.FormatInt(desiredVersion, 36))
}

// ParseObject decodes b as a JSON object and checks the shape limits (depth, key and string lengths) that
// apply to documents and patches alike. Section only labels errors.
func ParseObject(s Section, b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", s, ErrInvalidJSON, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: %w: trailing data after the object", s, ErrInvalidJSON)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: %w: must be a JSON object", s, ErrInvalidJSON)
	}
	if err := checkShape(s, m, "", 1); err != nil {
		return nil, err
	}
	return m, nil
}

func checkShape(s Section, v any, path string, depth int) error {
	switch x := v.(type) {
	case map[string]any:
		if depth > MaxDepth {
			return &LimitError{Section: s, Path: path, What: "depth", Limit: MaxDepth, Actual: depth}
		}
		for k, child := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if len(k) > MaxKeyBytes {
				return &LimitError{Section: s, Path: truncate(p), What: "key length", Limit: MaxKeyBytes, Actual: len(k)}
			}
			if k == "" || k[0] == '$' {
				return fmt.Errorf("%s.%s: %w: keys must be non-empty and must not start with '$'", s, truncate(p), ErrInvalidJSON)
			}
			if err := checkShape(s, child, p, depth+1); err != nil {
				return err
			}
		}
	case []any:
		if depth > MaxDepth {
			return &LimitError{Section: s, Path: path, What: "depth", Limit: MaxDepth, Actual: depth}
		}
		for i, child := range x {
			if err := checkShape(s, child, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
	case string:
		if len(x) > MaxStringBytes {
			return &LimitError{Section: s, Path: truncate(path), What: "string length", Limit: MaxStringBytes, Actual: len(x)}
		}
		if !utf8.ValidString(x) {
			return fmt.Errorf("%s.%s: %w: string is not valid UTF-8", s, truncate(path), ErrInvalidJSON)
		}
	}
	return nil
}

func truncate(p string) string {
	if len(p) > 80 {
		return p[:77] + "..."
	}
	return p
}

// Merge applies an RFC 7386 merge patch (null deletes, objects merge recursively, anything else replaces)
// to doc in place and returns it.
func Merge(doc, patch map[string]any) map[string]any {
	if doc == nil {
		doc = map[string]any{}
	}
	for k, pv := range patch {
		if pv == nil {
			delete(doc, k)
			continue
		}
		if pm, ok := pv.(map[string]any); ok {
			dm, _ := doc[k].(map[string]any)
			doc[k] = Merge(dm, pm)
			continue
		}
		doc[k] = pv
	}
	return doc
}

// Encode marshals a document compactly and enforces the section's size limit on the result.
func Encode(s Section, doc map[string]any) ([]byte, error) {
	// No HTML escaping: "<" stays one byte, so a document's size is what its author sees.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode %s: %w", s, err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxBytes(s) {
		return nil, &LimitError{Section: s, What: "size", Limit: MaxBytes(s), Actual: len(b)}
	}
	return b, nil
}

// Apply merges patch into the encoded document doc and returns the new encoded document, enforcing every
// limit on the patch and the result. It is what every twin writer calls.
func Apply(s Section, doc, patch []byte) ([]byte, error) {
	if err := storable(s, patch); err != nil {
		return nil, err
	}
	p, err := ParseObject(s, patch)
	if err != nil {
		return nil, err
	}
	var d map[string]any
	if len(bytes.TrimSpace(doc)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.UseNumber()
		if err := dec.Decode(&d); err != nil {
			return nil, fmt.Errorf("stored %s: %w", s, err)
		}
	}
	merged := Merge(d, p)
	if err := checkShape(s, merged, "", 1); err != nil {
		return nil, err
	}
	return Encode(s, merged)
}

// Validate checks a whole document (not a patch): an object within every limit of its section.
// A null value is not allowed in a stored document because null means "delete" in a patch.
// Provisioning validates a million tag documents, so a single scan accepts the ordinary ones without
// decoding them; anything it is not sure about goes through the full decode, which words the error.
func Validate(s Section, doc []byte) error {
	if err := storable(s, doc); err != nil {
		return err
	}
	if documentWithinLimits(s, doc) {
		return nil
	}
	m, err := ParseObject(s, doc)
	if err != nil {
		return err
	}
	if p := findNull(m, ""); p != "" {
		return fmt.Errorf("%s.%s: %w: null is not a value (in a patch it deletes)", s, p, ErrInvalidJSON)
	}
	_, err = Encode(s, m)
	return err
}

// storable refuses what Postgres cannot store although encoding/json would accept it: invalid UTF-8 (which
// the decoder silently replaces) and the NUL character, which jsonb rejects.
func storable(s Section, b []byte) error {
	if !utf8.Valid(b) {
		return fmt.Errorf("%s: %w: not valid UTF-8", s, ErrInvalidJSON)
	}
	if bytes.Contains(b, []byte(`\u0000`)) {
		return fmt.Errorf("%s: %w: the NUL character (\\u0000) is not supported", s, ErrInvalidJSON)
	}
	return nil
}

// documentWithinLimits reports whether doc is certainly a valid document of section s: a JSON object with no
// null, within the depth, key, string and size limits. It never allocates. False means "not sure": escaped
// keys and non-ASCII text (invalid UTF-8 and U+2028/2029 grow when decoded and re-encoded) are left to the
// full check.
func documentWithinLimits(s Section, doc []byte) bool {
	if !json.Valid(doc) {
		return false
	}
	var stack [MaxDepth + 1]bool // true: object
	depth, size := 0, 0
	expectKey := false
	for i := 0; i < len(doc); i++ {
		c := doc[i]
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '{', '[':
			if depth == 0 && c != '{' {
				return false
			}
			depth++
			if depth > MaxDepth {
				return false
			}
			stack[depth] = c == '{'
			expectKey = c == '{'
		case '}', ']':
			depth--
			expectKey = false
		case ',':
			expectKey = stack[depth]
		case ':':
			expectKey = false
		case '"':
			if depth == 0 {
				return false
			}
			j := i + 1
			escaped := false
			for ; doc[j] != '"'; j++ {
				if doc[j] == '\\' {
					escaped = true
					j++
				} else if doc[j] >= 0x80 {
					return false // non-ASCII: invalid UTF-8 or U+2028/9 change size when decoded
				}
			}
			n := j - i - 1
			if expectKey {
				if escaped || n == 0 || n > MaxKeyBytes || doc[i+1] == '$' {
					return false
				}
			} else if n > MaxStringBytes {
				return false
			}
			size += n + 2
			i = j
			expectKey = false
			continue
		case 'n':
			return false // null
		default:
			if depth == 0 {
				return false
			}
		}
		size++
	}
	return size <= MaxBytes(s)
}

func findNull(m map[string]any, path string) string {
	for k, v := range m {
		p := k
		if path != "" {
			p = path + "." + k
		}
		if v == nil {
			return p
		}
		if c, ok := v.(map[string]any); ok {
			if q := findNull(c, p); q != "" {
				return q
			}
		}
	}
	return ""
}
