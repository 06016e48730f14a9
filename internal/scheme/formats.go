package scheme

import (
	"slices"
	"strconv"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/fleetflow/fleetflow/internal/window"
)

// The formats a scheme author may give a tag so that its values are checked as maintenance windows
// (docs/architecture.md, "Maintenance windows"): a tag of format FormatWindow must be a window spec
// ("Sun 02:00-04:00"), one of format FormatTimezone an IANA time zone name ("Europe/Berlin"). Provisioning,
// `twin set-tags` and tag jobs then refuse a bad value with the path and the rule, and an operation started
// with --window-from-tags reads devices' windows from the tags so declared unless --window-tag says otherwise.
const (
	FormatWindow   = "maintenance-window"
	FormatTimezone = "timezone"
)

// annotationFormats are the standard formats, which stay annotations (they are not asserted).
var annotationFormats = []string{"json-pointer", "relative-json-pointer", "uuid", "duration", "period", "ipv4", "ipv6",
	"hostname", "email", "idn-email", "idn-hostname", "date", "time", "date-time", "uri", "iri", "uri-reference",
	"iri-reference", "uri-template", "semver"}

// formats are the formats registered with every scheme compiler.
func formats() []*jsonschema.Format {
	out := []*jsonschema.Format{
		{Name: FormatWindow, Validate: validateWindow},
		{Name: FormatTimezone, Validate: validateTimezone},
	}
	for _, name := range annotationFormats {
		out = append(out, &jsonschema.Format{Name: name, Validate: func(any) error { return nil }})
	}
	return out
}

// validateWindow accepts a maintenance window spec. Like every format, it only applies to strings.
func validateWindow(v any) error {
	s, ok := v.(string)
	if !ok {
		return nil
	}
	_, err := window.Parse(s, "")
	return err
}

// validateTimezone accepts an IANA time zone name; "UTC" and "Local" are names LoadLocation knows, but
// "Local" is the host's zone, which differs between machines, so it is refused.
func validateTimezone(v any) error {
	s, ok := v.(string)
	if !ok {
		return nil
	}
	if s == "" || s == "Local" {
		return errTimezone(s)
	}
	if _, err := time.LoadLocation(s); err != nil {
		return errTimezone(s)
	}
	return nil
}

type errTimezone string

func (e errTimezone) Error() string {
	return "unknown time zone " + strconv.Quote(string(e)) + " (use an IANA name such as Europe/Berlin)"
}

// TagsWithFormat returns the top-level tags the scheme declares with format (e.g. FormatWindow), sorted:
// the fleet-wide default tag names of devices' maintenance windows are the ones the scheme declares so.
func (s *Scheme) TagsWithFormat(format string) []string {
	var out []string
	seen := map[*jsonschema.Schema]bool{}
	var visit func(sch *jsonschema.Schema, depth int)
	visit = func(sch *jsonschema.Schema, depth int) {
		if sch == nil || depth > 4 || seen[sch] {
			return
		}
		seen[sch] = true
		for name, p := range sch.Properties {
			if hasFormat(p, format, 0) && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
		for _, sub := range [][]*jsonschema.Schema{sch.AllOf, {sch.Ref}} {
			for _, x := range sub {
				visit(x, depth+1)
			}
		}
	}
	visit(s.tags, 0)
	slices.Sort(out)
	return out
}

// hasFormat reports whether a property's schema (or one it refers to or requires through allOf) has format.
func hasFormat(sch *jsonschema.Schema, format string, depth int) bool {
	if sch == nil || depth > 4 {
		return false
	}
	if sch.Format != nil && sch.Format.Name == format {
		return true
	}
	if hasFormat(sch.Ref, format, depth+1) {
		return true
	}
	for _, x := range sch.AllOf {
		if hasFormat(x, format, depth+1) {
			return true
		}
	}
	return false
}
