package query

import "fmt"

// SyntaxError reports a query that does not follow the grammar. It carries the position so that a CLI or
// an API can point at the offending character instead of making the operator hunt through a long query.
type SyntaxError struct {
	Pos int    // 1-based character (not byte) offset into the query
	Msg string // always says what was expected and what was found
}

// Error renders the position first because that is what an operator needs to find the mistake.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("syntax error at position %d: %s", e.Pos, e.Msg)
}

// SemanticError reports a query that parses but cannot mean anything against the devices table (an
// unknown property root, a bad TOP, a GROUP BY that does not cover the selection, ...). It is separate from
// SyntaxError so that callers can tell "fix the spelling" from "fix the question".
type SemanticError struct {
	Pos int // 1-based character offset, or 0 when the problem concerns the query as a whole
	Msg string
}

// Error names the position when there is one, like SyntaxError, so both read the same way.
func (e *SemanticError) Error() string {
	if e.Pos > 0 {
		return fmt.Sprintf("invalid query at position %d: %s", e.Pos, e.Msg)
	}
	return "invalid query: " + e.Msg
}

func syntaxErr(pos int, format string, args ...any) *SyntaxError {
	return &SyntaxError{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func semanticErr(pos int, format string, args ...any) *SemanticError {
	return &SemanticError{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}
