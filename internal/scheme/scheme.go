// Package scheme is the fleet's metadata scheme (docs/architecture.md, "Metadata scheme"): a JSON Schema
// (draft 2020-12) that every device's tags must satisfy, and optionally one for its reported properties.
//
// It is a pure rule of the domain ring: it compiles a scheme, validates documents against it and words each
// violation as a path and a rule ("tags.floor: got string, want integer"), and it extracts the tag paths the
// scheme declares with their JSON types, which the query compiler uses to warn about unknown paths and to
// compare typed values. It reads no file and no network: a scheme's $ref may only point inside the scheme.
package scheme

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// MaxBytes bounds a scheme document: it travels in a workflow's input and is compiled by every process that
// checks tags, so it stays far below Temporal's 2 MB payload limit.
const MaxBytes = 256 << 10

// Draft is the only JSON Schema draft a scheme may declare in $schema (none declared means this one).
const Draft = "https://json-schema.org/draft/2020-12/schema"

// ErrViolation classifies a document or patch the scheme refuses (errors.Is).
var ErrViolation = errors.New("violates the metadata scheme")

// ErrInvalidScheme classifies a scheme document that cannot be compiled.
var ErrInvalidScheme = errors.New("invalid scheme")

// Violation is one way a document breaks the scheme: where (a path as the query language writes it,
// "tags.floor") and which rule ("got string, want integer").
type Violation struct {
	Path string `json:"path"`
	Rule string `json:"rule"`
}

// String is the form operators read: "tags.floor: got string, want integer".
func (v Violation) String() string { return v.Path + ": " + v.Rule }

// Error is a refusal by the scheme: every violation found, in a stable order.
type Error struct {
	Violations []Violation
}

// Error names the first violation and counts the others.
func (e *Error) Error() string {
	if len(e.Violations) == 0 {
		return ErrViolation.Error()
	}
	s := e.Violations[0].String()
	if n := len(e.Violations) - 1; n > 0 {
		s += fmt.Sprintf(" (and %d more)", n)
	}
	return s
}

// Is makes errors.Is(err, ErrViolation) true.
func (e *Error) Is(target error) bool { return target == ErrViolation }

// Scheme is a compiled scheme version.
type Scheme struct {
	Version  int64
	tags     *jsonschema.Schema
	fast     *flat // the tags part's fast path; nil when the scheme is not flat
	reported *jsonschema.Schema
	paths    map[string]PathInfo
	open     []string // paths under which any key is declared (additionalProperties or patternProperties schemas)
	sorted   []string
}

// PathInfo is what the scheme says about one declared path.
type PathInfo struct {
	// Types are the JSON Schema types the path may hold ("integer", "string", ...), empty when any.
	Types []string
}

// printer words rules in English whatever the machine's locale, so that messages are stable.
var printer = message.NewPrinter(language.English)

// Compile compiles a scheme: tags is required, reported may be nil. Each must be a JSON object within
// MaxBytes, of draft 2020-12, with no $ref outside itself. Errors wrap ErrInvalidScheme.
func Compile(version int64, tags, reported []byte) (*Scheme, error) {
	s := &Scheme{Version: version, paths: map[string]PathInfo{}}
	var err error
	if s.tags, err = compileDoc("tags", tags); err != nil {
		return nil, err
	}
	s.walk("tags", s.tags, 0, map[*jsonschema.Schema]bool{})
	s.fast = compileFlat(s.tags)
	if len(bytes.TrimSpace(reported)) > 0 && !bytes.Equal(bytes.TrimSpace(reported), []byte("null")) {
		if s.reported, err = compileDoc("reported", reported); err != nil {
			return nil, err
		}
		s.walk("properties.reported", s.reported, 0, map[*jsonschema.Schema]bool{})
	}
	for p := range s.paths {
		s.sorted = append(s.sorted, p)
	}
	slices.Sort(s.sorted)
	slices.Sort(s.open)
	return s, nil
}

// refuseLoader refuses every external reference: a scheme is self-contained, and a registry must never
// read a file or a URL because a scheme named one.
type refuseLoader struct{}

func (refuseLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("%s: a scheme may only $ref inside itself", url)
}

func compileDoc(what string, doc []byte) (*jsonschema.Schema, error) {
	if len(doc) > MaxBytes {
		return nil, fmt.Errorf("%w: the %s schema is %d bytes, more than %d", ErrInvalidScheme, what, len(doc), MaxBytes)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("%w: the %s schema is not JSON: %v", ErrInvalidScheme, what, err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the %s schema must be a JSON object", ErrInvalidScheme, what)
	}
	if d, ok := obj["$schema"]; ok && d != Draft && d != Draft+"#" {
		return nil, fmt.Errorf("%w: the %s schema declares $schema %v; only draft 2020-12 (%s) is supported", ErrInvalidScheme, what, d, Draft)
	}
	if t, ok := obj["type"]; ok && t != "object" {
		return nil, fmt.Errorf("%w: the %s schema must describe an object (\"type\": \"object\"), not %v", ErrInvalidScheme, what, t)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(refuseLoader{})
	// fleetflow's own formats are assertions; the standard ones stay annotations, as draft 2020-12 has them
	// by default (formats() registers them as no-ops), so that turning the assertion on changed no
	// existing scheme. Only "regex" cannot be overridden: a pattern that is no regular expression is refused.
	c.AssertFormat()
	for _, f := range formats() {
		c.RegisterFormat(f)
	}
	url := "fleetflow:///" + what + ".json"
	if err := c.AddResource(url, v); err != nil {
		return nil, fmt.Errorf("%w: the %s schema: %v", ErrInvalidScheme, what, err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("%w: the %s schema: %v", ErrInvalidScheme, what, err)
	}
	return sch, nil
}

// maxDepth is the twin's JSON depth limit (docs/architecture.md, "Data limits"): no path is deeper.
const maxDepth = 10

// walk records the paths a schema declares under prefix: the keys of "properties" (through $ref, allOf,
// anyOf, oneOf and if/then/else), with their types. An object whose additionalProperties or
// patternProperties is a schema declares any key below it (a map such as {"sensors": {"t1": …}}).
func (s *Scheme) walk(prefix string, sch *jsonschema.Schema, depth int, seen map[*jsonschema.Schema]bool) {
	if sch == nil || depth > maxDepth || seen[sch] {
		return
	}
	seen[sch] = true
	defer delete(seen, sch)
	if sch.Types != nil && !sch.Types.IsEmpty() && prefix != "tags" && prefix != "properties.reported" {
		info := s.paths[prefix]
		for _, t := range sch.Types.ToStrings() {
			if !slices.Contains(info.Types, t) {
				info.Types = append(info.Types, t)
			}
		}
		slices.Sort(info.Types)
		s.paths[prefix] = info
	}
	for name, p := range sch.Properties {
		path := Join(prefix, name)
		if _, ok := s.paths[path]; !ok {
			s.paths[path] = PathInfo{}
		}
		s.walk(path, p, depth+1, seen)
	}
	if _, ok := sch.AdditionalProperties.(*jsonschema.Schema); ok || len(sch.PatternProperties) > 0 {
		if !slices.Contains(s.open, prefix) {
			s.open = append(s.open, prefix)
		}
	}
	for _, sub := range [][]*jsonschema.Schema{sch.AllOf, sch.AnyOf, sch.OneOf, {sch.Ref, sch.If, sch.Then, sch.Else}} {
		for _, x := range sub {
			s.walk(prefix, x, depth, seen)
		}
	}
}

// Join appends a key to a path the way the query language writes it: .name for an identifier, ['name']
// otherwise.
func Join(prefix, key string) string {
	if identifier(key) {
		return prefix + "." + key
	}
	return prefix + "['" + strings.ReplaceAll(key, "'", "''") + "']"
}

func identifier(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		letter := r == '_' || r == '$' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// TagPaths lists the tag paths the scheme declares, sorted ("tags.region", "tags.site.floor"), for shell
// completion and suggestions.
func (s *Scheme) TagPaths() []string {
	var out []string
	for _, p := range s.sorted {
		if strings.HasPrefix(p, "tags") {
			out = append(out, p)
		}
	}
	return out
}

// Paths lists every declared path, tags and reported properties, sorted.
func (s *Scheme) Paths() []string { return slices.Clone(s.sorted) }

// Covers reports whether the scheme describes the document root of path ("tags" or "properties.reported"):
// a path under a root the scheme does not describe is neither known nor unknown.
func (s *Scheme) Covers(path string) bool {
	switch {
	case strings.HasPrefix(path, "tags"):
		return s.tags != nil
	case strings.HasPrefix(path, "properties.reported"):
		return s.reported != nil
	}
	return false
}

// Lookup says whether path (as Join spells it) is declared, and with which types. A path below a declared
// map (an object with an additionalProperties or patternProperties schema) is declared too, with no
// types known.
func (s *Scheme) Lookup(path string) ([]string, bool) {
	if info, ok := s.paths[path]; ok {
		return info.Types, true
	}
	for _, o := range s.open {
		if strings.HasPrefix(path, o+".") || strings.HasPrefix(path, o+"[") {
			return nil, true
		}
	}
	return nil, false
}

// Suggest returns the declared path nearest to path by edit distance (Levenshtein), or "" when none is
// near enough to be a plausible typo: at most a third of the path's length, and at least 1.
func (s *Scheme) Suggest(path string) string {
	return Nearest(path, s.sorted)
}

// Nearest returns the candidate nearest to word by Levenshtein distance, the first in order on a tie, or ""
// when the nearest is further than max(2, len(word)/3) edits.
func Nearest(word string, candidates []string) string {
	best, bestD := "", -1
	limit := max(2, len([]rune(word))/3)
	for _, c := range candidates {
		if c == word {
			continue
		}
		d := Levenshtein(word, c)
		if d <= limit && (bestD < 0 || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// Levenshtein is the edit distance between a and b (insertions, deletions, substitutions), over runes.
func Levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// ValidateTags checks a whole tags document; nil means it satisfies the scheme. A flat scheme accepts the
// ordinary documents on their bytes (flat); the others, and every refusal, go through the full validator.
func (s *Scheme) ValidateTags(doc []byte) error {
	if s.fast != nil && s.fast.valid(doc) {
		return nil
	}
	return validateDoc("tags", s.tags, doc)
}

// Flat reports whether the tags part has a fast path (flat): what the fleet's tags are checked with when
// most documents differ.
func (s *Scheme) Flat() bool { return s.fast != nil }

// ValidateReported checks a whole reported document; nil when it satisfies the scheme or the scheme has no
// reported part.
func (s *Scheme) ValidateReported(doc []byte) error {
	if s.reported == nil {
		return nil
	}
	return validateDoc("properties.reported", s.reported, doc)
}

// HasReported reports whether the scheme describes reported properties.
func (s *Scheme) HasReported() bool { return s.reported != nil }

func validateDoc(root string, sch *jsonschema.Schema, doc []byte) error {
	if len(bytes.TrimSpace(doc)) == 0 {
		doc = []byte("{}")
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return &Error{Violations: []Violation{{Path: root, Rule: "not JSON: " + err.Error()}}}
	}
	return validateValue(root, sch, v)
}

func validateValue(root string, sch *jsonschema.Schema, v any) error {
	return validateValueFiltered(root, sch, v, nil)
}

// validateValueFiltered validates v, leaving out the failed rules skip says to ignore.
func validateValueFiltered(root string, sch *jsonschema.Schema, v any, skip func(jsonschema.ErrorKind) bool) error {
	err := sch.Validate(v)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return &Error{Violations: []Violation{{Path: root, Rule: err.Error()}}}
	}
	var out []Violation
	collect(root, ve, skip, &out)
	if len(out) == 0 && skip != nil {
		return nil
	}
	if len(out) == 0 {
		out = append(out, Violation{Path: root, Rule: ve.ErrorKind.LocalizedString(printer)})
	}
	slices.SortStableFunc(out, func(a, b Violation) int { return strings.Compare(a.Path, b.Path) })
	out = slices.Compact(out)
	return &Error{Violations: out}
}

// collect gathers the leaves of a validation error tree: the rules that actually failed, each at its
// instance location.
func collect(root string, e *jsonschema.ValidationError, skip func(jsonschema.ErrorKind) bool, out *[]Violation) {
	if len(e.Causes) == 0 {
		if skip != nil && skip(e.ErrorKind) {
			return
		}
		*out = append(*out, Violation{Path: pathOf(root, e.InstanceLocation), Rule: e.ErrorKind.LocalizedString(printer)})
		return
	}
	for _, c := range e.Causes {
		collect(root, c, skip, out)
	}
}

func pathOf(root string, loc []string) string {
	p := root
	for _, k := range loc {
		if _, err := strconv.Atoi(k); err == nil {
			p += "[" + k + "]"
			continue
		}
		p = Join(p, k)
	}
	return p
}

// CheckTagsPatch returns the violations a tags merge patch causes by itself, whatever the tags it is merged
// into: the patch's values are checked as if merged into an empty document, and what only the rest of a
// document could satisfy (a missing required key, too few properties, a dependency) is ignored. A job
// refuses such a patch before it touches any device; the merged document of each device is checked again
// when it is written.
func (s *Scheme) CheckTagsPatch(patch []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(patch))
	if err != nil {
		return fmt.Errorf("tags patch: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("tags patch: not a JSON object")
	}
	dropNulls(obj)
	return validateValueFiltered("tags", s.tags, obj, contextual)
}

// CheckReportedPatch returns the violations a reported-properties merge patch causes by itself, whatever the
// reported document it is merged into (docs/architecture.md, "Metadata scheme"): the values it sets are
// checked as if merged into an empty document, rules that only the rest of a document could satisfy
// (required, minProperties, dependencies) are left out, and a key it deletes (null) that the scheme requires
// where it stands is a violation. A device is answered by what it sends, never by what an older report or an
// older scheme left in its twin; nil when the scheme has no reported part.
func (s *Scheme) CheckReportedPatch(patch []byte) error {
	if s.reported == nil {
		return nil
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(patch))
	if err != nil {
		return &Error{Violations: []Violation{{Path: reportedRoot, Rule: "not JSON: " + err.Error()}}}
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return &Error{Violations: []Violation{{Path: reportedRoot, Rule: "a patch must be a JSON object"}}}
	}
	return s.CheckReportedPatchValue(obj)
}

const reportedRoot = "properties.reported"

// CheckReportedPatchValue is CheckReportedPatch on a patch decoded already, with numbers as json.Number (the
// validator's own form, and twin.ParseObject's): a gateway has parsed the patch to check its shape, and a
// second parse would cost as much as the check. It takes obj over: the keys the patch deletes are dropped
// from it.
func (s *Scheme) CheckReportedPatchValue(obj map[string]any) error {
	if s.reported == nil {
		return nil
	}
	const root = reportedRoot
	var deleted []Violation
	requiredDeleted(root, []*jsonschema.Schema{s.reported}, obj, 0, &deleted)
	dropNulls(obj)
	err := validateValueFiltered(root, s.reported, obj, contextual)
	if len(deleted) == 0 {
		return err
	}
	var se *Error
	if errors.As(err, &se) {
		deleted = append(deleted, se.Violations...)
	}
	slices.SortStableFunc(deleted, func(a, b Violation) int { return strings.Compare(a.Path, b.Path) })
	return &Error{Violations: slices.Compact(deleted)}
}

// requiredDeleted finds the keys obj deletes (null) that one of schs, the schemas that apply at path,
// requires, following properties (through $ref and allOf, the applicators that always apply) into the
// objects obj patches.
func requiredDeleted(path string, schs []*jsonschema.Schema, obj map[string]any, depth int, out *[]Violation) {
	if depth > maxDepth {
		return
	}
	schs = applying(schs, 0)
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		switch x := obj[k].(type) {
		case nil:
			for _, sch := range schs {
				if slices.Contains(sch.Required, k) {
					*out = append(*out, Violation{Path: Join(path, k), Rule: "deletes a required property"})
					break
				}
			}
		case map[string]any:
			var sub []*jsonschema.Schema
			for _, sch := range schs {
				if p := sch.Properties[k]; p != nil {
					sub = append(sub, p)
				}
			}
			if len(sub) > 0 {
				requiredDeleted(Join(path, k), sub, x, depth+1, out)
			}
		}
	}
}

// applying adds to schs the schemas their $ref and allOf apply at the same place.
func applying(schs []*jsonschema.Schema, depth int) []*jsonschema.Schema {
	if depth > maxDepth {
		return schs
	}
	out := slices.Clone(schs)
	for _, sch := range schs {
		var more []*jsonschema.Schema
		if sch.Ref != nil {
			more = append(more, sch.Ref)
		}
		more = append(more, sch.AllOf...)
		if len(more) > 0 {
			out = append(out, applying(more, depth+1)...)
		}
	}
	return out
}

// contextual says whether a failed rule depends on keys a patch does not set.
func contextual(k jsonschema.ErrorKind) bool {
	switch k.(type) {
	case *kind.Required, *kind.MinProperties, *kind.DependentRequired, *kind.Dependency:
		return true
	}
	return false
}

// dropNulls removes the keys a merge patch deletes: they set no value to check.
func dropNulls(m map[string]any) {
	for k, v := range m {
		switch x := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			dropNulls(x)
		}
	}
}

// Canonical re-encodes a scheme document compactly with sorted keys, so that the stored text and its
// digest do not depend on the file's formatting.
func Canonical(doc []byte) ([]byte, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: not JSON: %v", ErrInvalidScheme, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", ErrInvalidScheme)
	}
	return json.Marshal(v)
}

// Memo validates documents against a scheme and remembers the verdicts of the documents it has seen, up to
// a bound: a manifest repeats the same few tag documents (a site's devices share region, site and model), and
// the devices of a fleet send the same few reported patches (a desired value acknowledged, a firmware
// version), and a validation costs about 4 µs with the full validator, which a million rows would otherwise
// pay in full. A hit costs about 20 ns, less than the fast path of a flat tags scheme, so the memo is asked
// first; with a fast path a full memo keeps what it holds and the fast path takes the documents it does not
// (a manifest whose every row differs would otherwise pay for a map that never hits), without one it forgets
// everything and starts again. It is not safe for concurrent use: give each goroutine its own.
type Memo struct {
	check func([]byte) error
	m     map[string]error
	max   int
	keep  bool // when full, keep what it holds (a fast path takes the rest) rather than start again
}

// NewMemo returns a Memo of ValidateTags over s remembering at most max documents (it forgets them all when
// full).
func (s *Scheme) NewMemo(max int) *Memo {
	m := newMemo(s.ValidateTags, max)
	m.keep = s.fast != nil
	return m
}

// NewReportedPatchMemo returns a Memo of CheckReportedPatch over s, bounded as NewMemo's.
func (s *Scheme) NewReportedPatchMemo(max int) *Memo { return newMemo(s.CheckReportedPatch, max) }

func newMemo(check func([]byte) error, max int) *Memo {
	return &Memo{check: check, m: make(map[string]error, min(max, 1024)), max: max}
}

// Check is the Memo's validation (ValidateTags or CheckReportedPatch), remembered.
func (m *Memo) Check(doc []byte) error {
	if err, ok := m.m[string(doc)]; ok {
		return err
	}
	err := m.check(doc)
	if len(m.m) >= m.max {
		if m.keep {
			return err
		}
		clear(m.m)
	}
	m.m[string(doc)] = err
	return err
}

// Verdict returns the remembered verdict of doc: known is false when the Memo has none.
func (m *Memo) Verdict(doc []byte) (known bool, err error) {
	err, known = m.m[string(doc)]
	return known, err
}

// Remember records the verdict of doc, checked outside the Memo (on a value decoded already, say).
func (m *Memo) Remember(doc []byte, err error) {
	if len(m.m) >= m.max {
		if m.keep {
			return
		}
		clear(m.m)
	}
	m.m[string(doc)] = err
}

// ValidateTags is Scheme.ValidateTags, remembered: Check, for a Memo made by NewMemo.
func (m *Memo) ValidateTags(doc []byte) error { return m.Check(doc) }

// Len is how many verdicts the Memo holds.
func (m *Memo) Len() int { return len(m.m) }
