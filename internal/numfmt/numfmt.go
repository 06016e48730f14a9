// Package numfmt formats numbers the way fleetflow shows them to operators. It is pure (standard library
// only), so that workflow code, the CLI and the report share one formatter.
package numfmt

import "strconv"

// Thousands formats n with thousands separators ("412,000"), as operators read counts.
func Thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := ""
	if n < 0 {
		neg, s = "-", s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return neg + s
}
