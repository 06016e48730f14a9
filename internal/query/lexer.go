package query

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

type tokenKind int

const (
	tokEOF tokenKind = iota
	tokIdent
	tokString
	tokNumber
	tokPunct
)

type token struct {
	kind tokenKind
	pos  int    // 1-based character offset of the token's first character
	text string // the token as written, for error messages
	val  string // string literal: its value; number: canonical JSON spelling
}

// describe renders a token for "found ..." in error messages; long tokens are cut so that one huge string
// literal does not drown the message.
func (t token) describe() string {
	switch t.kind {
	case tokEOF:
		return "end of query"
	case tokString:
		return "string " + shorten(t.text)
	case tokNumber:
		return "number " + shorten(t.text)
	default:
		return "'" + shorten(t.text) + "'"
	}
}

func shorten(s string) string {
	const max = 40
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max]) + "..."
}

func isIdentStart(r rune) bool {
	return r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
}

func isIdentPart(r rune) bool {
	return isIdentStart(r) || isDigit(r) || r == '-'
}

func isDigit(r rune) bool { return r >= '0' && r <= '9' }

func describeRune(r rune) string {
	if unicode.IsPrint(r) {
		return fmt.Sprintf("'%c'", r)
	}
	return fmt.Sprintf("character U+%04X", r)
}

// lex splits the query into tokens. It works on runes so that positions count characters, which is what a
// user sees in an editor, not bytes.
func lex(q string) ([]token, error) {
	if !utf8.ValidString(q) {
		pos := 1
		for i, r := range q {
			if r == utf8.RuneError {
				if _, size := utf8.DecodeRuneInString(q[i:]); size == 1 {
					break
				}
			}
			pos++
		}
		return nil, syntaxErr(pos, "expected UTF-8 text, found an invalid byte")
	}
	rs := []rune(q)
	var toks []token
	i := 0
	for i < len(rs) {
		r := rs[i]
		start := i
		switch {
		case unicode.IsSpace(r):
			i++
		case isIdentStart(r):
			for i++; i < len(rs) && isIdentPart(rs[i]); i++ {
			}
			toks = append(toks, token{kind: tokIdent, pos: start + 1, text: string(rs[start:i])})
		case r == '$':
			if i+1 >= len(rs) || !isIdentStart(rs[i+1]) {
				found := "end of query"
				if i+1 < len(rs) {
					found = describeRune(rs[i+1])
				}
				return nil, syntaxErr(start+1, "expected a name after '$' (as in $version), found %s", found)
			}
			for i++; i < len(rs) && isIdentPart(rs[i]); i++ {
			}
			toks = append(toks, token{kind: tokIdent, pos: start + 1, text: string(rs[start:i])})
		case isDigit(r) || (r == '-' && i+1 < len(rs) && isDigit(rs[i+1])):
			tok, next := lexNumber(rs, i)
			toks = append(toks, tok)
			i = next
		case r == '\'' || r == '"':
			tok, next, err := lexString(rs, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, tok)
			i = next
		default:
			op := ""
			two := ""
			if i+1 < len(rs) {
				two = string(rs[i : i+2])
			}
			switch {
			case two == "!=" || two == "<>" || two == "<=" || two == ">=":
				op = two
			case strings.ContainsRune("(),.[]*=<>", r):
				op = string(r)
			case r == '!':
				found := "end of query"
				if i+1 < len(rs) {
					found = describeRune(rs[i+1])
				}
				return nil, syntaxErr(start+2, "expected '=' after '!', found %s", found)
			default:
				return nil, syntaxErr(start+1,
					"expected a keyword, property, value, operator or punctuation, found %s", describeRune(r))
			}
			i += len([]rune(op))
			toks = append(toks, token{kind: tokPunct, pos: start + 1, text: op})
		}
	}
	toks = append(toks, token{kind: tokEOF, pos: len(rs) + 1})
	return toks, nil
}

// lexNumber reads -?digits[.digits] and canonicalises it (no leading zeros) so that the value is valid JSON
// for containment parameters. Exponents are not accepted: they would let a few characters ask Postgres for
// a numeric with millions of digits.
func lexNumber(rs []rune, i int) (token, int) {
	start := i
	neg := false
	if rs[i] == '-' {
		neg = true
		i++
	}
	intStart := i
	for i < len(rs) && isDigit(rs[i]) {
		i++
	}
	intPart := strings.TrimLeft(string(rs[intStart:i]), "0")
	if intPart == "" {
		intPart = "0"
	}
	frac := ""
	if i+1 < len(rs) && rs[i] == '.' && isDigit(rs[i+1]) {
		fracStart := i + 1
		for i = fracStart; i < len(rs) && isDigit(rs[i]); i++ {
		}
		frac = "." + string(rs[fracStart:i])
	}
	val := intPart + frac
	if neg {
		val = "-" + val
	}
	return token{kind: tokNumber, pos: start + 1, text: string(rs[start:i]), val: val}, i
}

// lexString reads a string quoted with ' or "; a doubled quote stands for itself, as in SQL.
func lexString(rs []rune, i int) (token, int, error) {
	quote := rs[i]
	start := i
	var b strings.Builder
	for i++; ; i++ {
		if i >= len(rs) {
			return token{}, 0, syntaxErr(start+1,
				"expected a closing %c for the string that starts here, found end of query", quote)
		}
		r := rs[i]
		if r == 0 {
			return token{}, 0, syntaxErr(i+1, "expected a string character, found character U+0000 (NUL cannot be stored in text or JSON)")
		}
		if r == quote {
			if i+1 < len(rs) && rs[i+1] == quote {
				b.WriteRune(quote)
				i++
				continue
			}
			i++
			return token{kind: tokString, pos: start + 1, text: string(rs[start:i]), val: b.String()}, i, nil
		}
		b.WriteRune(r)
	}
}
