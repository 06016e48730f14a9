package query

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxQueryLength is the longest query accepted, in characters. It bounds the work and the SQL size one
// request can cause.
const MaxQueryLength = 8192

// maxDepth bounds the nesting of parentheses and NOT, so that a hostile query can neither exhaust the
// parser's stack nor produce SQL that exceeds Postgres' max_stack_depth.
const maxDepth = 64

// reserved words cannot start a property reference; any word is fine after a dot (tags.order).
var reserved = map[string]bool{
	"SELECT": true, "TOP": true, "FROM": true, "WHERE": true, "GROUP": true, "BY": true, "ORDER": true,
	"ASC": true, "DESC": true, "AND": true, "OR": true, "NOT": true, "IN": true, "AS": true,
	"TRUE": true, "FALSE": true, "NULL": true,
}

// Parse checks a query against the grammar and returns its tree. It is separate from Compile so that a
// query can be validated or inspected (for example before starting a job over its devices) without
// producing SQL. Errors are *SyntaxError or *SemanticError.
func Parse(q string) (*Query, error) {
	if n := utf8.RuneCountInString(q); n > MaxQueryLength {
		return nil, semanticErr(0, "the query is %d characters long; the limit is %d", n, MaxQueryLength)
	}
	toks, err := lex(q)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	return p.parseQuery()
}

type parser struct {
	toks  []token
	i     int
	depth int
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) peekAt(n int) token {
	if p.i+n < len(p.toks) {
		return p.toks[p.i+n]
	}
	return p.toks[len(p.toks)-1]
}

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tokEOF {
		p.i++
	}
	return t
}

// prev is the last consumed token, used to say "after X" in error messages.
func (p *parser) prev() string {
	if p.i == 0 {
		return "the start of the query"
	}
	t := p.toks[p.i-1]
	if t.kind == tokString {
		return shorten(t.text) // already quoted
	}
	return "'" + shorten(t.text) + "'"
}

func isKw(t token, kw string) bool { return t.kind == tokIdent && strings.EqualFold(t.text, kw) }

func isPunct(t token, s string) bool { return t.kind == tokPunct && t.text == s }

func isReserved(t token) bool { return t.kind == tokIdent && reserved[strings.ToUpper(t.text)] }

// expected builds the one error shape the package uses for grammar problems: what was expected, where,
// and what was found instead.
func (p *parser) expected(what string) *SyntaxError {
	return p.expectedHint(what, "")
}

// expectedHint is expected with a parenthesised hint for mistakes that are easy to make.
func (p *parser) expectedHint(what, hint string) *SyntaxError {
	t := p.peek()
	e := syntaxErr(t.pos, "expected %s after %s, found %s", what, p.prev(), t.describe())
	if hint != "" {
		e.Msg += " (" + hint + ")"
	}
	return e
}

func (p *parser) expectKw(kw, what string) error {
	if !isKw(p.peek(), kw) {
		return p.expected(what)
	}
	p.next()
	return nil
}

func (p *parser) expectPunct(s, what string) error {
	if !isPunct(p.peek(), s) {
		return p.expected(what)
	}
	p.next()
	return nil
}

func (p *parser) parseQuery() (*Query, error) {
	q := &Query{}
	if !isKw(p.peek(), "SELECT") {
		t := p.peek()
		return nil, syntaxErr(t.pos, "expected SELECT at the start of the query, found %s", t.describe())
	}
	p.next()
	if isKw(p.peek(), "TOP") {
		p.next()
		t := p.peek()
		if t.kind != tokNumber || strings.Contains(t.val, ".") {
			return nil, p.expected("a whole number")
		}
		p.next()
		n, err := strconv.ParseInt(t.val, 10, 64)
		if err != nil {
			return nil, semanticErr(t.pos, "TOP %s is too large", shorten(t.text))
		}
		if n < 1 {
			return nil, semanticErr(t.pos, "TOP must be at least 1, found %s", t.text)
		}
		q.Top = n
	}
	if isPunct(p.peek(), "*") {
		p.next()
		q.Star = true
	} else {
		for {
			v, err := p.parseValue("'*', a property reference or COUNT()")
			if err != nil {
				return nil, err
			}
			item := SelectItem{Value: v}
			if isKw(p.peek(), "AS") {
				p.next()
				t := p.peek()
				if t.kind != tokIdent || isReserved(t) || strings.HasPrefix(t.text, "$") {
					return nil, p.expected("a column name")
				}
				p.next()
				item.Alias = t.text
			}
			q.Select = append(q.Select, item)
			if !isPunct(p.peek(), ",") {
				break
			}
			p.next()
		}
	}
	if !isKw(p.peek(), "FROM") {
		if q.Star {
			return nil, p.expected("FROM")
		}
		return nil, p.expected("',', AS or FROM")
	}
	p.next()
	if t := p.peek(); !isKw(t, "devices") {
		return nil, syntaxErr(t.pos, "expected devices (the only collection) after 'FROM', found %s", t.describe())
	}
	p.next()
	follow := "WHERE, GROUP BY, ORDER BY or end of query"
	if isKw(p.peek(), "WHERE") {
		p.next()
		c, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		q.Where = c
		follow = "AND, OR, GROUP BY, ORDER BY or end of query"
	}
	if isKw(p.peek(), "GROUP") {
		p.next()
		if err := p.expectKw("BY", "BY"); err != nil {
			return nil, err
		}
		for {
			v, err := p.parseValue("a property reference")
			if err != nil {
				return nil, err
			}
			q.GroupBy = append(q.GroupBy, v)
			if !isPunct(p.peek(), ",") {
				break
			}
			p.next()
		}
		follow = "',', ORDER BY or end of query"
	}
	if isKw(p.peek(), "ORDER") {
		p.next()
		if err := p.expectKw("BY", "BY"); err != nil {
			return nil, err
		}
		for {
			v, err := p.parseValue("a property reference, column name or COUNT()")
			if err != nil {
				return nil, err
			}
			item := OrderItem{Value: v}
			if isKw(p.peek(), "ASC") {
				p.next()
			} else if isKw(p.peek(), "DESC") {
				p.next()
				item.Desc = true
			}
			q.OrderBy = append(q.OrderBy, item)
			if !isPunct(p.peek(), ",") {
				break
			}
			p.next()
		}
		follow = "',', ASC, DESC or end of query"
	}
	if p.peek().kind != tokEOF {
		return nil, p.expected(follow)
	}
	return q, nil
}

// parseValue reads COUNT() or a property reference.
func (p *parser) parseValue(what string) (Value, error) {
	t := p.peek()
	if isKw(t, "COUNT") && isPunct(p.peekAt(1), "(") {
		p.next()
		p.next()
		if err := p.expectPunct(")", "')' (COUNT takes no argument)"); err != nil {
			return Value{}, err
		}
		return Value{Pos: t.pos, Count: true}, nil
	}
	if t.kind != tokIdent || isReserved(t) {
		return Value{}, p.expected(what)
	}
	path, err := p.parsePath()
	if err != nil {
		return Value{}, err
	}
	return Value{Pos: t.pos, Path: path}, nil
}

// parsePath reads ident { .ident | ['key'] | [n] }; the caller has checked that an identifier comes first.
func (p *parser) parsePath() (Path, error) {
	first := p.next()
	path := Path{Pos: first.pos, Segments: []Segment{{Name: first.text}}}
	for {
		switch {
		case isPunct(p.peek(), "."):
			p.next()
			t := p.peek()
			if t.kind != tokIdent {
				return Path{}, p.expected("a property name")
			}
			p.next()
			path.Segments = append(path.Segments, Segment{Name: t.text})
		case isPunct(p.peek(), "["):
			p.next()
			t := p.peek()
			switch {
			case t.kind == tokString:
				path.Segments = append(path.Segments, Segment{Name: t.val, Quoted: true})
			case t.kind == tokNumber && !strings.ContainsAny(t.val, ".-"):
				path.Segments = append(path.Segments, Segment{Name: t.val, Index: true})
			default:
				return Path{}, p.expected("a quoted property name or an array index")
			}
			p.next()
			if err := p.expectPunct("]", "']'"); err != nil {
				return Path{}, err
			}
		default:
			return path, nil
		}
	}
}

// enter counts one more level of nesting opened by the token at pos, which is where an error points.
func (p *parser) enter(pos int) error {
	p.depth++
	if p.depth > maxDepth {
		return syntaxErr(pos, "expected at most %d nested parentheses or NOTs, found more", maxDepth)
	}
	return nil
}

func (p *parser) parseOr() (Condition, error) {
	start := p.peek().pos
	first, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	terms := []Condition{first}
	for isKw(p.peek(), "OR") {
		p.next()
		c, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		terms = append(terms, c)
	}
	if len(terms) == 1 {
		return first, nil
	}
	return &Or{Pos: start, Terms: terms}, nil
}

func (p *parser) parseAnd() (Condition, error) {
	start := p.peek().pos
	first, err := p.parseNot()
	if err != nil {
		return nil, err
	}
	terms := []Condition{first}
	for isKw(p.peek(), "AND") {
		p.next()
		c, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		terms = append(terms, c)
	}
	if len(terms) == 1 {
		return first, nil
	}
	return &And{Pos: start, Terms: terms}, nil
}

func (p *parser) parseNot() (Condition, error) {
	if t := p.peek(); isKw(t, "NOT") {
		p.next()
		if err := p.enter(t.pos); err != nil {
			return nil, err
		}
		x, err := p.parseNot()
		if err != nil {
			return nil, err
		}
		p.depth--
		return &Not{Pos: t.pos, X: x}, nil
	}
	return p.parsePrimary()
}

const conditionWhat = "a condition (a comparison such as tags.region = 'eu', IS_DEFINED(...), STARTSWITH(...), NOT or '(')"

func (p *parser) parsePrimary() (Condition, error) {
	t := p.peek()
	switch {
	case isPunct(t, "("):
		p.next()
		if err := p.enter(t.pos); err != nil {
			return nil, err
		}
		c, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		p.depth--
		if !isPunct(p.peek(), ")") {
			return nil, p.expected("AND, OR or ')' to close the '(' at position " + strconv.Itoa(t.pos))
		}
		p.next()
		return c, nil
	case t.kind == tokIdent && !isReserved(t) && isPunct(p.peekAt(1), "("):
		return p.parseCall()
	case t.kind == tokIdent && !isReserved(t):
		path, err := p.parsePath()
		if err != nil {
			return nil, err
		}
		return p.parsePredicate(path)
	case t.kind == tokString || t.kind == tokNumber || isKw(t, "TRUE") || isKw(t, "FALSE") || isKw(t, "NULL"):
		lit, _ := p.parseLiteral()
		opTok := p.peek()
		op, ok := compareOp(opTok)
		if !ok {
			return nil, p.expected("a comparison operator (=, !=, <>, <, <=, >, >=)")
		}
		p.next()
		rt := p.peek()
		if rt.kind != tokIdent || isReserved(rt) {
			return nil, p.expected("a property reference (one side of a comparison must be a property)")
		}
		path, err := p.parsePath()
		if err != nil {
			return nil, err
		}
		return &Comparison{Pos: t.pos, Path: path, Op: flipOp(op), Literal: lit}, nil
	default:
		return nil, p.expected(conditionWhat)
	}
}

// parsePredicate reads what follows a property in a condition: a comparison or [NOT] IN (...).
func (p *parser) parsePredicate(path Path) (Condition, error) {
	t := p.peek()
	if op, ok := compareOp(t); ok {
		p.next()
		lit, err := p.parseLiteral()
		if err != nil {
			return nil, err
		}
		return &Comparison{Pos: path.Pos, Path: path, Op: op, Literal: lit}, nil
	}
	negated := false
	if isKw(t, "NOT") && isKw(p.peekAt(1), "IN") {
		p.next()
		negated = true
	}
	if isKw(p.peek(), "IN") {
		p.next()
		if err := p.expectPunct("(", "'(' and a list of values"); err != nil {
			return nil, err
		}
		in := &In{Pos: path.Pos, Path: path, Negated: negated}
		for {
			lit, err := p.parseLiteral()
			if err != nil {
				return nil, err
			}
			in.List = append(in.List, lit)
			if isPunct(p.peek(), ",") {
				p.next()
				continue
			}
			if err := p.expectPunct(")", "',' or ')'"); err != nil {
				return nil, err
			}
			return in, nil
		}
	}
	return nil, p.expected("a comparison operator (=, !=, <>, <, <=, >, >=) or IN")
}

func (p *parser) parseLiteral() (Literal, error) {
	t := p.peek()
	lit := Literal{Pos: t.pos}
	switch {
	case t.kind == tokString:
		lit.Kind, lit.Text = LitString, t.val
	case t.kind == tokNumber:
		lit.Kind, lit.Text = LitNumber, t.val
	case isKw(t, "TRUE"), isKw(t, "FALSE"):
		lit.Kind, lit.Bool = LitBool, isKw(t, "TRUE")
	case isKw(t, "NULL"):
		lit.Kind = LitNull
	default:
		hint := ""
		if t.kind == tokIdent && !isReserved(t) {
			hint = "comparing two properties is not supported"
		}
		return Literal{}, p.expectedHint("a value (a 'string', a number, true, false or null)", hint)
	}
	p.next()
	return lit, nil
}

func (p *parser) parseCall() (Condition, error) {
	name := p.next()
	p.next() // (
	fn := strings.ToUpper(name.text)
	switch fn {
	case "IS_DEFINED", "IS_NULL", "STARTSWITH":
	case "IN_GROUP":
		if p.peek().kind != tokString {
			return nil, p.expected("a group name as a 'string', as in IN_GROUP('lab')")
		}
		lit, _ := p.parseLiteral()
		if err := p.expectPunct(")", "')'"); err != nil {
			return nil, err
		}
		return &InGroup{Pos: name.pos, Name: lit.Text}, nil
	case "COUNT":
		return nil, syntaxErr(name.pos, "expected a condition, found the aggregate COUNT() (it may only be selected or ordered by)")
	default:
		return nil, syntaxErr(name.pos, "expected one of the functions IS_DEFINED, IS_NULL, STARTSWITH or IN_GROUP, found '%s'", shorten(name.text))
	}
	t := p.peek()
	if t.kind != tokIdent || isReserved(t) {
		return nil, p.expected("a property reference")
	}
	path, err := p.parsePath()
	if err != nil {
		return nil, err
	}
	call := &Call{Pos: name.pos, Func: fn, Path: path}
	if fn == "STARTSWITH" {
		if err := p.expectPunct(",", "',' and the prefix"); err != nil {
			return nil, err
		}
		if p.peek().kind != tokString {
			return nil, p.expected("a 'string' prefix")
		}
		lit, _ := p.parseLiteral()
		call.Arg = &lit
	}
	if err := p.expectPunct(")", "')'"); err != nil {
		return nil, err
	}
	return call, nil
}

func compareOp(t token) (string, bool) {
	if t.kind != tokPunct {
		return "", false
	}
	switch t.text {
	case "=", "!=", "<", "<=", ">", ">=":
		return t.text, true
	case "<>":
		return "!=", true
	}
	return "", false
}

// flipOp turns "lit op path" into "path op' lit".
func flipOp(op string) string {
	switch op {
	case "<":
		return ">"
	case "<=":
		return ">="
	case ">":
		return "<"
	case ">=":
		return "<="
	}
	return op
}
