package query

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

var placeholder = regexp.MustCompile(`\$[0-9]+`)

// FuzzCompile checks the safety promise of the package on arbitrary input: Compile never panics, and SQL it
// produces is fixed text plus placeholders — no quote, semicolon or comment, no string literal of the query,
// and the same SQL (up to placeholder numbers) whatever the string literals contain.
func FuzzCompile(f *testing.F) {
	for _, tc := range compileCases {
		f.Add(tc.q, tc.opts.MaxRows)
	}
	for _, tc := range errorCases {
		if len(tc.q) < 1000 {
			f.Add(tc.q, 0)
		}
	}
	f.Add("SELECT * FROM devices WHERE tags.x = 'tags' OR tags.y = 'SELECT' OR tags.z = 'string'", 0)
	f.Add("SELECT * FROM devices WHERE tags['; DROP TABLE devices; --'] = '/* */'", 0)
	f.Add(`SELECT * FROM devices WHERE tags.x = "a""b'c" AND STARTSWITH(tags.y, '$1')`, 0)

	f.Fuzz(func(t *testing.T, q string, maxRows int) {
		c, err := Compile(q, Options{MaxRows: maxRows})
		if err != nil {
			if c != nil {
				t.Fatalf("Compile(%q) returned both a result and an error", q)
			}
			return
		}
		checkSQL(t, q, c)

		// The same query with every string literal replaced must give the same SQL up to placeholder
		// numbers: that proves no literal's content shapes the SQL text.
		variant, lits := replaceStrings(q)
		vc, verr := Compile(variant, Options{MaxRows: maxRows})
		if verr == nil {
			if a, b := placeholder.ReplaceAllString(c.SQL, "$"), placeholder.ReplaceAllString(vc.SQL, "$"); a != b {
				t.Fatalf("SQL depends on string literal contents:\n%q\n%s\n%q\n%s", q, c.SQL, variant, vc.SQL)
			}
		}
		for _, lit := range lits {
			if utf8.RuneCountInString(lit) >= 3 && strings.Contains(c.SQL, lit) && verr != nil {
				t.Fatalf("string literal %q of %q occurs in the SQL: %s", lit, q, c.SQL)
			}
		}
	})
}

// checkSQL asserts what must hold for every successful compilation.
func checkSQL(t *testing.T, q string, c *Compiled) {
	t.Helper()
	// The only literal the compiler writes itself is the constant that hides retired devices.
	sql := strings.ReplaceAll(c.SQL, "status <> 'retired'", "status <> $0")
	for _, bad := range []string{"'", `"`, ";", "--", "/*", "*/", `\`} {
		if strings.Contains(sql, bad) {
			t.Fatalf("SQL for %q contains %q: %s", q, bad, c.SQL)
		}
	}
	for _, r := range sql {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" _$:,()[]<>=@#*", r)) {
			t.Fatalf("SQL for %q contains unexpected character %q: %s", q, r, c.SQL)
		}
	}
	// Every placeholder refers to an argument and every argument is used.
	used := make([]bool, len(c.Args)+1)
	for _, m := range placeholder.FindAllString(c.SQL, -1) {
		n, err := strconv.Atoi(m[1:])
		if err != nil || n < 1 || n > len(c.Args) {
			t.Fatalf("SQL for %q has placeholder %s but %d args: %s", q, m, len(c.Args), c.SQL)
		}
		used[n] = true
	}
	for i := 1; i < len(used); i++ {
		if !used[i] {
			t.Fatalf("SQL for %q never uses $%d: %s", q, i, c.SQL)
		}
	}
	for i, a := range c.Args {
		switch a.(type) {
		case string, int64, bool, []string:
		default:
			t.Fatalf("arg $%d of %q has type %T, which is not one pgx encodes directly", i+1, q, a)
		}
	}
	if !c.Star && !strings.HasPrefix(c.SQL, "SELECT ") {
		t.Fatalf("SQL for %q does not start with SELECT: %s", q, c.SQL)
	}
	if c.Star && len(c.Columns) != 10 {
		t.Fatalf("SELECT * for %q describes %d columns", q, len(c.Columns))
	}
}

// replaceStrings returns q with each string literal replaced by a fixed one, and the literals' values.
func replaceStrings(q string) (string, []string) {
	toks, err := lex(q)
	if err != nil {
		return q, nil
	}
	rs := []rune(q)
	var b strings.Builder
	var lits []string
	last := 0
	for _, t := range toks {
		if t.kind != tokString {
			continue
		}
		start := t.pos - 1
		b.WriteString(string(rs[last:start]))
		b.WriteString("'zq'")
		last = start + utf8.RuneCountInString(t.text)
		lits = append(lits, t.val)
	}
	b.WriteString(string(rs[last:]))
	return b.String(), lits
}
