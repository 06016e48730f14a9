package query

import (
	"strings"
)

// Query is a parsed twin query. The tree is exported so that other parts of fleetflow (the CLI, a future
// in-memory evaluator for the simulator) can inspect what a query asks for without re-implementing the
// grammar; Compile is the only place that turns it into SQL.
type Query struct {
	Top     int64 // 0 when the query has no TOP
	Star    bool  // SELECT *: the whole twin, in StarColumns order
	Select  []SelectItem
	Where   Condition // nil when the query has no WHERE
	GroupBy []Value
	OrderBy []OrderItem
}

// SelectItem is one output column; the alias is kept apart from the value because it never reaches SQL.
type SelectItem struct {
	Value Value
	Alias string // "" when the query gives none
}

// OrderItem is one sort key; ascending is the zero value because that is SQL's and Azure's default.
type OrderItem struct {
	Value Value
	Desc  bool
}

// Value is what SELECT, GROUP BY and ORDER BY accept: a property reference or the COUNT() aggregate.
type Value struct {
	Pos   int
	Count bool // COUNT(); Path is empty
	Path  Path
}

// Path is a property reference such as tags.site['floor 2'] or properties.reported.firmware.version.
// Segments are kept as written (case-sensitive) because JSON keys are case-sensitive.
type Path struct {
	Pos      int
	Segments []Segment
}

// Segment is one step of a Path. The written form is remembered so that error messages quote the user's
// own spelling back, and so that an array index is not confused with a key.
type Segment struct {
	Name   string
	Quoted bool // written ['name'] or ["name"], so any key is reachable
	Index  bool // written [n]: an array element, Name holds the decimal index
}

// String spells the path the way the query language writes it, for error messages and column names.
func (p Path) String() string {
	var b strings.Builder
	for i, s := range p.Segments {
		switch {
		case s.Index:
			b.WriteString("[" + s.Name + "]")
		case s.Quoted:
			b.WriteString("['" + strings.ReplaceAll(s.Name, "'", "''") + "']")
		default:
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.Name)
		}
	}
	return b.String()
}

// Condition is a node of the WHERE clause. The interface is sealed (unexported method) because Compile must
// know every node kind to guarantee that user text only ever reaches SQL as a parameter.
type Condition interface {
	// Position is the 1-based character offset where the condition starts, for error messages.
	Position() int
	condition()
}

// And holds two or more conditions that must all hold; chains are flattened so that long queries do not
// become deeply nested SQL.
type And struct {
	Pos   int
	Terms []Condition
}

// Or holds two or more alternatives, flattened for the same reason as And.
type Or struct {
	Pos   int
	Terms []Condition
}

// Not negates a condition. Compile pushes it down to the comparisons, so that "undefined" stays false
// under negation as in Azure.
type Not struct {
	Pos int
	X   Condition
}

// Comparison compares a property with a literal. A literal on the left is turned around by the parser
// (5 < x becomes x > 5), so that Compile has one shape to deal with.
type Comparison struct {
	Pos     int
	Path    Path
	Op      string // =, !=, <, <=, >, >= (<> is normalised to !=)
	Literal Literal
}

// In tests a property against a list of literals; Negated is NOT IN.
type In struct {
	Pos     int
	Path    Path
	Negated bool
	List    []Literal
}

// Call is one of the predicate functions IS_DEFINED(path), IS_NULL(path) and STARTSWITH(path, 'prefix').
type Call struct {
	Pos  int
	Func string // upper case
	Path Path
	Arg  *Literal // STARTSWITH's prefix, nil otherwise
}

// Position implements Condition.
func (c *And) Position() int { return c.Pos }

// Position implements Condition.
func (c *Or) Position() int { return c.Pos }

// Position implements Condition.
func (c *Not) Position() int { return c.Pos }

// Position implements Condition.
func (c *Comparison) Position() int { return c.Pos }

// Position implements Condition.
func (c *In) Position() int { return c.Pos }

// Position implements Condition.
func (c *Call) Position() int { return c.Pos }

// InGroup is IN_GROUP('name'): the device is a member of the named group (docs/architecture.md, "Groups").
// A dynamic group's membership is its own condition, compiled in place; a static group's is its list.
type InGroup struct {
	Pos  int
	Name string
}

// Position implements Condition.
func (c *InGroup) Position() int { return c.Pos }

func (*And) condition()        {}
func (*Or) condition()         {}
func (*Not) condition()        {}
func (*Comparison) condition() {}
func (*In) condition()         {}
func (*Call) condition()       {}
func (*InGroup) condition()    {}

// LiteralKind is the JSON type of a literal; comparisons only match values of the same type, as in Azure.
type LiteralKind int

// The literal kinds.
const (
	LitString LiteralKind = iota
	LitNumber
	LitBool
	LitNull
)

// Literal is a constant of the query. Numbers keep their decimal text (canonical JSON form) rather than a
// float64 so that 0.1 or a 30-digit serial number compare exactly in Postgres numeric.
type Literal struct {
	Pos  int
	Kind LiteralKind
	Text string // LitString: the value; LitNumber: canonical decimal text
	Bool bool   // LitBool: the value
}

func (l Literal) describe() string {
	switch l.Kind {
	case LitString:
		return "string '" + shorten(strings.ReplaceAll(l.Text, "'", "''")) + "'"
	case LitNumber:
		return "number " + shorten(l.Text)
	case LitBool:
		if l.Bool {
			return "true"
		}
		return "false"
	default:
		return "null"
	}
}
