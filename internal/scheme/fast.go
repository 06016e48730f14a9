package scheme

import (
	"fmt"
	"math/big"
	"slices"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// flat is the fast path of a flat tags scheme (docs/architecture.md, "Metadata scheme"): the schemes most
// fleets declare — an object whose properties are scalars with types, enums, constants, patterns, lengths
// and bounds, some required, others allowed or not — compiled so that a tag document is checked on its raw
// JSON bytes, the way twin.Validate checks limits, instead of being decoded into maps first (about 4 µs and
// 33 allocations a document, which provisioning a million distinct documents paid in full).
//
// It only ever accepts: valid reports true when the document certainly satisfies the scheme, and false
// when it does not or when the fast path is not sure (an escaped string, a nested value, anything unusual).
// A false goes to the full validator, which gives the verdict and words every violation, so the verdicts
// and the messages are the full validator's by construction; what the fast path must never do is accept a
// document the full validator refuses (FuzzFastPath checks both agree). Every rule it applies is read from
// the schema the full validator compiled (its regexps, its rationals), so the two cannot read a keyword
// differently.
type flat struct {
	keys map[string]int // declared or required key → index into props
	// props[i] is the rule of key i; nil for a key that is only required (its value then follows the
	// additional-properties rule).
	props    []*leaf
	required uint64 // bit i: key i is required
	// additional is the rule of keys neither declared nor required: nil with closed false allows any value.
	additional *leaf
	closed     bool // additionalProperties: false
}

// leaf is the fast path's rule for one scalar value.
type leaf struct {
	anything bool             // no rule for scalars (true, or only keywords of objects and arrays)
	types    jsonschema.Types // 0: any type
	strings  map[string]bool  // enum and const members that are strings
	others   []any            // enum and const members that are booleans, null or numbers (*big.Rat)
	choice   bool             // an enum or const restricts the value to strings ∪ others
	pattern  jsonschema.Regexp
	minLen   *int
	maxLen   *int
	numeric  bool // some numeric bound below is set
	min      *big.Rat
	max      *big.Rat
	exMin    *big.Rat
	exMax    *big.Rat
	multiple *big.Rat
}

// maxFlatKeys bounds the declared and required keys of a flat scheme (a bit each in flat.required).
const maxFlatKeys = 64

// compileFlat returns the fast path of a compiled tags schema, or nil when the schema uses anything it does
// not implement (references, combinators, conditions, formats, pattern properties, dependencies, property
// counts, unevaluated properties, extensions): those documents always take the full validator.
func compileFlat(root *jsonschema.Schema) *flat {
	if root == nil || root.Bool != nil || !agnosticAbsent(root) || root.Enum != nil || root.Const != nil {
		return nil
	}
	if root.Types != nil && !root.Types.IsEmpty() && !slices.Contains(root.Types.ToStrings(), "object") {
		return nil
	}
	if root.MinProperties != nil || root.MaxProperties != nil || root.PropertyNames != nil || len(root.PatternProperties) > 0 ||
		len(root.Dependencies) > 0 || len(root.DependentRequired) > 0 || len(root.DependentSchemas) > 0 ||
		root.UnevaluatedProperties != nil {
		return nil
	}
	f := &flat{keys: map[string]int{}}
	for name, sch := range root.Properties {
		l := compileLeaf(sch)
		if l == nil {
			return nil
		}
		f.keys[name] = len(f.props)
		f.props = append(f.props, l)
	}
	for _, name := range root.Required {
		i, ok := f.keys[name]
		if !ok {
			i = len(f.props)
			f.keys[name] = i
			f.props = append(f.props, nil)
		}
		if i >= maxFlatKeys {
			return nil
		}
		f.required |= 1 << i
	}
	switch a := root.AdditionalProperties.(type) {
	case nil:
	case bool:
		f.closed = !a
	case *jsonschema.Schema:
		if f.additional = compileLeaf(a); f.additional == nil {
			return nil
		}
	default:
		return nil
	}
	return f
}

// agnosticAbsent reports whether s has none of the keywords that apply to values of every type and that the
// fast path does not implement, and was compiled as draft 2020-12. A standard format is an annotation (it
// never refuses a value: annotationFormats), so it does not keep a property off the fast path; fleetflow's
// own formats, which are asserted, do.
func agnosticAbsent(s *jsonschema.Schema) bool {
	return s.DraftVersion == 2020 && s.Ref == nil && s.RecursiveRef == nil && s.DynamicRef == nil && s.Not == nil &&
		len(s.AllOf) == 0 && len(s.AnyOf) == 0 && len(s.OneOf) == 0 && s.If == nil && s.Then == nil && s.Else == nil &&
		(s.Format == nil || slices.Contains(annotationFormats, s.Format.Name)) && len(s.Extensions) == 0
}

// compileLeaf compiles the schema of one property, or returns nil when the fast path cannot apply it to a
// scalar. Keywords of objects and arrays are ignored: the fast path never accepts a nested value (the full
// validator reads those), so they never decide a verdict it gives.
func compileLeaf(s *jsonschema.Schema) *leaf {
	if s.Bool != nil {
		if *s.Bool {
			return &leaf{anything: true}
		}
		return &leaf{choice: true} // false: no value; the full validator words it
	}
	if !agnosticAbsent(s) || s.ContentEncoding != nil || s.ContentMediaType != nil || s.ContentSchema != nil {
		return nil
	}
	l := &leaf{pattern: s.Pattern, minLen: s.MinLength, maxLen: s.MaxLength,
		min: s.Minimum, max: s.Maximum, exMin: s.ExclusiveMinimum, exMax: s.ExclusiveMaximum, multiple: s.MultipleOf}
	if s.Types != nil {
		l.types = *s.Types
	}
	l.numeric = l.min != nil || l.max != nil || l.exMin != nil || l.exMax != nil || l.multiple != nil
	if s.Enum != nil || s.Const != nil {
		l.choice, l.strings = true, map[string]bool{}
		var members []any
		if s.Enum != nil {
			members = s.Enum.Values
		}
		if s.Const != nil {
			if s.Enum != nil {
				return nil // both: rare, and the intersection is the full validator's business
			}
			members = []any{*s.Const}
		}
		for _, m := range members {
			switch v := m.(type) {
			case string:
				l.strings[v] = true
			case bool, nil:
				l.others = append(l.others, v)
			case map[string]any, []any:
				// A scalar never equals an object or an array, and nested values are not accepted here.
			default:
				// As the full validator compares numbers: the rationals of their texts.
				r, ok := new(big.Rat).SetString(fmt.Sprint(v))
				if !ok {
					return nil
				}
				l.others = append(l.others, r)
			}
		}
	}
	// No scalar rule: any scalar passes (nested values never reach a rule).
	l.anything = !l.choice && l.types.IsEmpty() && l.pattern == nil && l.minLen == nil && l.maxLen == nil && !l.numeric
	return l
}

// typeMask is the jsonschema.Types of one JSON type name.
func typeMask(name string) jsonschema.Types {
	var t jsonschema.Types
	t.Add(name)
	return t
}

var (
	typeNull    = typeMask("null")
	typeBoolean = typeMask("boolean")
	typeNumber  = typeMask("number")
	typeInteger = typeMask("integer")
	typeString  = typeMask("string")
)

// valid reports whether doc certainly satisfies the scheme; false means "not sure", not "invalid".
func (f *flat) valid(doc []byte) bool {
	s := string(doc) // one copy, then substrings: map look-ups and regexps take strings
	i := skipSpace(s, 0)
	if i == len(s) {
		s, i = "{}", 0 // validateDoc's reading of an empty document
	}
	if s[i] != '{' {
		return false
	}
	var present uint64
	i = skipSpace(s, i+1)
	if i < len(s) && s[i] == '}' {
		i++
	} else {
		for {
			if i >= len(s) || s[i] != '"' {
				return false
			}
			key, next, ok := plainString(s, i)
			if !ok {
				return false
			}
			i = skipSpace(s, next)
			if i >= len(s) || s[i] != ':' {
				return false
			}
			i = skipSpace(s, i+1)
			rule := f.additional
			if k, declared := f.keys[key]; declared {
				present |= 1 << k
				if f.props[k] != nil {
					rule = f.props[k]
				}
			} else if f.closed {
				return false
			}
			if i, ok = f.value(rule, s, i); !ok {
				return false
			}
			i = skipSpace(s, i)
			if i >= len(s) {
				return false
			}
			if s[i] == '}' {
				i++
				break
			}
			if s[i] != ',' {
				return false
			}
			i = skipSpace(s, i+1)
		}
	}
	return skipSpace(s, i) == len(s) && present&f.required == f.required
}

// value reads the JSON value at s[i:] and checks it against rule (nil: any value); it returns the index
// after the value and whether the value is certainly valid and well formed.
func (f *flat) value(rule *leaf, s string, i int) (int, bool) {
	if i >= len(s) {
		return i, false
	}
	switch c := s[i]; {
	case c == '"':
		str, next, ok := plainString(s, i)
		return next, ok && (rule == nil || rule.anything || rule.string(str))
	case c == 't' || c == 'f' || c == 'n':
		var lit string
		var v any
		switch c {
		case 't':
			lit, v = "true", true
		case 'f':
			lit, v = "false", false
		default:
			lit, v = "null", nil
		}
		if len(s)-i < len(lit) || s[i:i+len(lit)] != lit {
			return i, false
		}
		return i + len(lit), rule == nil || rule.anything || rule.literal(v)
	case c == '-' || c >= '0' && c <= '9':
		next, integral, ok := scanNumber(s, i)
		return next, ok && (rule == nil || rule.anything || rule.number(s[i:next], integral))
	}
	return i, false // an object or an array: the full validator reads nested values
}

// string checks a string value.
func (l *leaf) string(v string) bool {
	if !l.types.IsEmpty() && l.types&typeString == 0 {
		return false
	}
	if l.choice && !l.strings[v] {
		return false
	}
	if l.minLen != nil || l.maxLen != nil {
		n := utf8.RuneCountInString(v)
		if l.minLen != nil && n < *l.minLen || l.maxLen != nil && n > *l.maxLen {
			return false
		}
	}
	return l.pattern == nil || l.pattern.MatchString(v)
}

// literal checks true, false or null.
func (l *leaf) literal(v any) bool {
	want := typeBoolean
	if v == nil {
		want = typeNull
	}
	if !l.types.IsEmpty() && l.types&want == 0 {
		return false
	}
	if !l.choice {
		return true
	}
	for _, m := range l.others {
		if _, isRat := m.(*big.Rat); !isRat && m == v {
			return true
		}
	}
	return false
}

// number checks a number given as its JSON text; integral says the text has no fraction or exponent.
func (l *leaf) number(text string, integral bool) bool {
	var r *big.Rat
	rat := func() *big.Rat {
		if r == nil {
			r, _ = new(big.Rat).SetString(text)
		}
		return r
	}
	if !l.types.IsEmpty() && l.types&typeNumber == 0 {
		if l.types&typeInteger == 0 {
			return false
		}
		if !integral && (len(text) > 40 || rat() == nil || !rat().IsInt()) {
			return false
		}
	}
	if l.choice || l.numeric {
		if len(text) > 40 || rat() == nil {
			return false // an absurd exponent: leave big numbers to the full validator
		}
	}
	if l.choice {
		found := false
		for _, m := range l.others {
			if q, ok := m.(*big.Rat); ok && q.Cmp(r) == 0 {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if !l.numeric {
		return true
	}
	return (l.min == nil || r.Cmp(l.min) >= 0) && (l.max == nil || r.Cmp(l.max) <= 0) &&
		(l.exMin == nil || r.Cmp(l.exMin) > 0) && (l.exMax == nil || r.Cmp(l.exMax) < 0) &&
		(l.multiple == nil || new(big.Rat).Quo(r, l.multiple).IsInt())
}

// plainString reads the JSON string starting at s[i] (a quote) and returns its text, the index after it,
// and false for a string the fast path does not read itself: an escape sequence, a control character,
// invalid UTF-8 (which the decoder would replace) or no closing quote.
func plainString(s string, i int) (string, int, bool) {
	ascii := true
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '"':
			v := s[i+1 : j]
			return v, j + 1, ascii || utf8.ValidString(v)
		case c == '\\' || c < 0x20:
			return "", j, false
		case c >= 0x80:
			ascii = false
		}
	}
	return "", len(s), false
}

// scanNumber reads the JSON number starting at s[i] and returns the index after it, whether it has neither a
// fraction nor an exponent, and whether it is a well-formed JSON number.
func scanNumber(s string, i int) (int, bool, bool) {
	digits := func(j int) int {
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		return j
	}
	j := i
	if s[j] == '-' {
		j++
	}
	switch {
	case j < len(s) && s[j] == '0':
		j++
	case j < len(s) && s[j] >= '1' && s[j] <= '9':
		j = digits(j)
	default:
		return j, false, false
	}
	integral := true
	if j < len(s) && s[j] == '.' {
		integral = false
		k := digits(j + 1)
		if k == j+1 {
			return k, false, false
		}
		j = k
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		integral = false
		j++
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		k := digits(j)
		if k == j {
			return k, false, false
		}
		j = k
	}
	return j, integral, true
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}
