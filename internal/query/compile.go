package query

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// StarColumns is what SELECT * selects. It is a contract with the registry, which scans a twin from exactly
// these columns in this order; change both together.
const StarColumns = "id, status, online, last_seen, tags, desired, desired_version, reported, reported_version, twin_version, tags_version"

// starColumnInfo mirrors StarColumns so that callers decoding generic rows know each column's type.
var starColumnInfo = []Column{
	{Name: "id", Kind: KindText},
	{Name: "status", Kind: KindText},
	{Name: "online", Kind: KindBool},
	{Name: "last_seen", Kind: KindTime},
	{Name: "tags", Kind: KindJSON},
	{Name: "desired", Kind: KindJSON},
	{Name: "desired_version", Kind: KindInt},
	{Name: "reported", Kind: KindJSON},
	{Name: "reported_version", Kind: KindInt},
	{Name: "twin_version", Kind: KindInt},
}

// retiredStatus is the status hidden unless a query asks about status; retired devices are kept for audit
// but are no longer part of the fleet an operator queries.
const retiredStatus = "retired"

// validRoots is quoted in the unknown-root error so that the user sees the whole vocabulary at once.
const validRoots = "deviceId, status, connectionState, lastActivityTime, version, tags, properties.desired, properties.reported"

// Options are the caller's limits, kept apart from the query text because they come from the operator's
// configuration, not from the (possibly untrusted) query author.
type Options struct {
	// MaxRows, when > 0, caps the number of rows: it is the LIMIT when the query has no TOP, and a TOP
	// larger than it is lowered to it, so that no query can stream the whole fleet to a client by accident.
	MaxRows int
	// Targets compiles the query to the ids of the devices it selects (SELECT id FROM devices WHERE ...),
	// whatever it projects: jobs and rollouts take their target set from an ordinary twin query, so an
	// operator can run the same text with `devices query` first and see exactly which devices it covers.
	// Aggregating queries are refused, since groups are not devices.
	Targets bool
	// Groups defines the device groups IN_GROUP may name (docs/architecture.md, "Groups"); a group it does
	// not hold is an error. The registry loads the definitions GroupNames finds in the query.
	Groups map[string]GroupDef
	// Vocabulary is the metadata scheme (docs/architecture.md, "Metadata scheme"), nil when none is set:
	// a tag path it does not declare is a warning, and a literal is compared as the type it declares.
	Vocabulary Vocabulary
}

// GroupDef is what the compiler needs of a group: a static group's members are rows of
// device_group_members; a dynamic group's are the devices its condition selects.
type GroupDef struct {
	Static bool
	Where  Condition // the dynamic group's condition; nil for a static group (or a dynamic one of every device)
}

// Vocabulary is what the compiler asks of a metadata scheme. Paths are spelled as Path.String spells them
// ("tags.region", "tags['floor 2']", "properties.reported.fw").
type Vocabulary interface {
	// Covers says whether the scheme describes the document the path starts in.
	Covers(path string) bool
	// Lookup says whether the scheme declares path, and which JSON Schema types it may hold.
	Lookup(path string) (types []string, known bool)
	// Suggest returns the declared path nearest to an unknown one, or "".
	Suggest(path string) string
}

// ColumnKind tells the caller how to scan an output column, since the SQL column names (c1, c2, ...) carry
// no meaning.
type ColumnKind int

// The column kinds.
const (
	KindJSON ColumnKind = iota // jsonb: scan into []byte or any and decode; NULL when the property is missing
	KindText                   // text
	KindInt                    // bigint
	KindBool                   // boolean
	KindTime                   // timestamptz, may be NULL (lastActivityTime of a device never seen)
)

// Column describes one output column. Name is what the user asked for (alias or property name) because
// aliases are never put into SQL.
type Column struct {
	Name string
	Kind ColumnKind
}

// Compiled is a query ready for pgx: SQL holds only fixed text and $n placeholders, every value from the
// query is in Args. Star tells the registry to scan twins (StarColumns) instead of generic columns;
// Aggregate tells it the rows are groups, not devices.
type Compiled struct {
	SQL       string
	Args      []any
	Columns   []Column
	Star      bool
	Aggregate bool
	// Groups are the groups the query names, directly or through a dynamic group, sorted: an operation
	// records them so that a group in use is not deleted.
	Groups []string
	// Warnings are what the operator should read before trusting the answer: tag paths the scheme does
	// not know, literals compared as the scheme's type rather than as written.
	Warnings []string
}

// Compile parses a twin query and translates it to one parameterized Postgres statement over the devices
// table. The translation keeps user input out of the SQL text entirely (it is always a parameter) and
// turns JSON equality into containment so that the GIN index on tags answers selective queries. Errors are
// *SyntaxError or *SemanticError.
func Compile(q string, opts Options) (*Compiled, error) {
	parsed, err := Parse(q)
	if err != nil {
		return nil, err
	}
	return compileQuery(parsed, opts)
}

type compiler struct {
	opts       Options
	groupStack []string
	groupsSeen map[string]bool
	warned     map[string]bool
	warnings   []string
	args       []any
	params     map[string]int
	inWhere    bool
	sawStatus  bool
	groupKeys  map[string]bool
	grouped    bool
	aggregated bool
}

// param registers a value and returns its placeholder with an explicit cast, so that Postgres never has to
// guess a type and the same value with the same cast reuses one placeholder (GROUP BY and ORDER BY must
// repeat the select expression exactly, placeholders included).
func (c *compiler) param(v any, cast string) string {
	key := cast + " " + fmt.Sprintf("%#v", v)
	n, ok := c.params[key]
	if !ok {
		c.args = append(c.args, v)
		n = len(c.args)
		c.params[key] = n
	}
	return "$" + strconv.Itoa(n) + "::" + cast
}

// ref is a resolved property reference: either a fixed column or a path into one of the JSON documents.
type ref struct {
	pos     int
	display string     // as written, for messages
	spelled string     // the whole path as the query language spells it, for the scheme
	name    string     // default output column name
	kind    ColumnKind // type of the value expression
	column  string     // SQL column for fixed properties; "" for connectionState and JSON paths
	conn    bool       // connectionState, derived from online
	doc     string     // tags, desired or reported for JSON references
	segs    []string   // path inside doc; empty means the whole document
	indexed bool       // some segment is an array index, which containment cannot express
}

func (r ref) isPath() bool { return r.doc != "" && len(r.segs) > 0 }

// key identifies the value for GROUP BY matching; the index flag is irrelevant because #> sees only text.
func (r ref) key() string {
	if r.doc != "" {
		return r.doc + "\x00" + strings.Join(r.segs, "\x00")
	}
	if r.conn {
		return "connectionState"
	}
	return r.column
}

func (c *compiler) resolve(p Path) (ref, error) {
	segs := p.Segments
	r := ref{pos: p.Pos, display: shorten(p.String()), spelled: p.String(), name: segs[len(segs)-1].Name}
	first := segs[0]
	plain := func(s Segment) bool { return !s.Quoted && !s.Index }
	if !plain(first) {
		return ref{}, semanticErr(p.Pos, "unknown property root in %s; valid roots are %s", r.display, validRoots)
	}
	scalar := func(column string, kind ColumnKind) (ref, error) {
		if len(segs) > 1 {
			return ref{}, semanticErr(p.Pos, "%s has no properties, found %s", first.Name, r.display)
		}
		r.column, r.kind = column, kind
		return r, nil
	}
	var rest []Segment
	switch first.Name {
	case "deviceId":
		return scalar("id", KindText)
	case "status":
		if c.inWhere {
			c.sawStatus = true
		}
		return scalar("status", KindText)
	case "connectionState":
		if len(segs) > 1 {
			return ref{}, semanticErr(p.Pos, "connectionState has no properties, found %s", r.display)
		}
		r.conn, r.kind = true, KindText
		return r, nil
	case "lastActivityTime":
		return scalar("last_seen", KindTime)
	case "version":
		return scalar("twin_version", KindInt)
	case "tags":
		r.doc, rest = "tags", segs[1:]
	case "properties":
		if len(segs) < 2 || !plain(segs[1]) || (segs[1].Name != "desired" && segs[1].Name != "reported") {
			return ref{}, semanticErr(p.Pos, "expected properties.desired or properties.reported, found %s", r.display)
		}
		r.doc, rest = segs[1].Name, segs[2:]
		if len(rest) > 0 && plain(rest[0]) && rest[0].Name == "$version" {
			if len(rest) > 1 {
				return ref{}, semanticErr(p.Pos, "properties.%s.$version has no properties, found %s", r.doc, r.display)
			}
			r.doc, r.column, r.kind = "", r.doc+"_version", KindInt
			return r, nil
		}
	default:
		e := semanticErr(p.Pos, "unknown property root '%s' in %s; valid roots are %s",
			shorten(first.Name), r.display, validRoots)
		for _, root := range rootNames {
			if strings.EqualFold(root, first.Name) {
				e.Msg += " (names are case-sensitive: did you mean " + root + "?)"
			}
		}
		return ref{}, e
	}
	r.kind = KindJSON
	defer func() {
		if len(r.segs) > 0 {
			c.checkPath(r)
		}
	}()
	for _, s := range rest {
		if plain(s) && strings.HasPrefix(s.Name, "$") {
			return ref{}, semanticErr(p.Pos, "unknown metadata property %s in %s; only properties.desired.$version and properties.reported.$version exist",
				shorten(s.Name), r.display)
		}
		r.segs = append(r.segs, s.Name)
		r.indexed = r.indexed || s.Index
	}
	return r, nil
}

// valueSQL spells a property's value. SELECT, WHERE, GROUP BY and ORDER BY all use it, with interned
// placeholders, so that the same property is the same SQL expression everywhere: Postgres only matches a
// selected or ordered expression to a GROUP BY item when the two are identical.
func (c *compiler) valueSQL(r ref) string {
	switch {
	case r.conn:
		return "(CASE WHEN online THEN " + c.param("connected", "text") + " ELSE " + c.param("disconnected", "text") + " END)"
	case r.column != "":
		return r.column
	case len(r.segs) == 0:
		return r.doc
	default:
		return r.doc + " #> " + c.param(r.segs, "text[]")
	}
}

// compileQuery emits the clauses in SQL order, so that placeholders are numbered as a reader meets them.
func compileQuery(q *Query, opts Options) (*Compiled, error) {
	c := &compiler{params: map[string]int{}, groupKeys: map[string]bool{}, opts: opts, groupsSeen: map[string]bool{}, warned: map[string]bool{}}
	out := &Compiled{Star: q.Star}
	var sb strings.Builder
	sb.WriteString("SELECT ")

	for _, it := range q.Select {
		if it.Value.Count {
			c.aggregated = true
		}
	}
	c.grouped = len(q.GroupBy) > 0
	out.Aggregate = c.aggregated || c.grouped

	// Resolve GROUP BY first (without emitting) so that select items can be checked against it; the
	// placeholders are registered in select order below, which keeps the SQL readable.
	groupRefs := make([]ref, len(q.GroupBy))
	for i, g := range q.GroupBy {
		if g.Count {
			return nil, semanticErr(g.Pos, "cannot GROUP BY COUNT(); group by a property and select COUNT()")
		}
		r, err := c.resolve(g.Path)
		if err != nil {
			return nil, err
		}
		groupRefs[i] = r
		c.groupKeys[r.key()] = true
	}

	aliases := map[string]int{}
	if opts.Targets && out.Aggregate {
		pos := 0
		if len(q.GroupBy) > 0 {
			pos = q.GroupBy[0].Pos
		}
		return nil, semanticErr(pos, "a target query selects devices, not groups: drop COUNT() and GROUP BY (e.g. SELECT * FROM devices WHERE ...)")
	}
	if opts.Targets {
		sb.WriteString("id")
		out.Columns = append(out.Columns, Column{Name: "id", Kind: KindText})
		out.Star = false
	} else if q.Star {
		if c.grouped {
			return nil, semanticErr(q.GroupBy[0].Pos, "SELECT * cannot be grouped; select the GROUP BY properties and COUNT() instead")
		}
		sb.WriteString(StarColumns)
		out.Columns = append(out.Columns, starColumnInfo...)
	} else {
		used := map[string]bool{}
		for i, it := range q.Select {
			var expr, name string
			var kind ColumnKind
			if it.Value.Count {
				expr, name, kind = "count(*)", "count", KindInt
			} else {
				r, err := c.resolve(it.Value.Path)
				if err != nil {
					return nil, err
				}
				if c.grouped && !c.groupKeys[r.key()] {
					return nil, semanticErr(it.Value.Pos, "%s is selected but not in GROUP BY; add it to GROUP BY or remove it",
						r.display)
				}
				if c.aggregated && !c.grouped {
					return nil, semanticErr(it.Value.Pos, "%s is selected together with COUNT() but the query has no GROUP BY; add GROUP BY %s",
						r.display, r.display)
				}
				expr, name, kind = c.valueSQL(r), r.name, r.kind
			}
			if it.Alias != "" {
				name = it.Alias
				if _, dup := aliases[it.Alias]; !dup {
					aliases[it.Alias] = i + 1
				}
			}
			name = uniqueName(name, used)
			if i > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "%s AS c%d", expr, i+1)
			out.Columns = append(out.Columns, Column{Name: name, Kind: kind})
		}
	}
	sb.WriteString(" FROM devices")

	var where string
	if q.Where != nil {
		c.inWhere = true
		f, err := c.cond(q.Where, false)
		c.inWhere = false
		if err != nil {
			return nil, err
		}
		where = f.sql
		if !c.sawStatus && f.prec == precOr {
			where = "(" + where + ")"
		}
	}
	if !c.sawStatus {
		// A constant of ours, not input: written as a literal so that a cached statement's generic plan
		// knows how selective it is (as a parameter, Postgres estimated one row and sorted a million).
		hide := "status <> '" + retiredStatus + "'"
		if where == "" {
			where = hide
		} else {
			where += " AND " + hide
		}
	}
	sb.WriteString(" WHERE " + where)

	if c.grouped {
		sb.WriteString(" GROUP BY ")
		for i, r := range groupRefs {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(c.valueSQL(r))
		}
	}

	if len(q.OrderBy) > 0 {
		sb.WriteString(" ORDER BY ")
		for i, o := range q.OrderBy {
			expr, err := c.orderExpr(o.Value, aliases)
			if err != nil {
				return nil, err
			}
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(expr)
			if o.Desc {
				sb.WriteString(" DESC")
			}
		}
	}

	limit := q.Top
	if opts.MaxRows > 0 && (limit == 0 || limit > int64(opts.MaxRows)) {
		limit = int64(opts.MaxRows)
	}
	if limit > 0 {
		sb.WriteString(" LIMIT " + c.param(limit, "bigint"))
	}
	out.SQL = sb.String()
	out.Args = c.args
	for g := range c.groupsSeen {
		out.Groups = append(out.Groups, g)
	}
	slices.Sort(out.Groups)
	out.Warnings = c.warnings
	return out, nil
}

func (c *compiler) orderExpr(v Value, aliases map[string]int) (string, error) {
	if v.Count {
		if !c.aggregated && !c.grouped {
			return "", semanticErr(v.Pos, "ORDER BY COUNT() needs COUNT() in the selection or a GROUP BY")
		}
		return "count(*)", nil
	}
	if segs := v.Path.Segments; len(segs) == 1 && !segs[0].Quoted {
		if n, ok := aliases[segs[0].Name]; ok && !isRoot(segs[0].Name) {
			return "c" + strconv.Itoa(n), nil
		}
	}
	r, err := c.resolve(v.Path)
	if err != nil {
		return "", err
	}
	if c.grouped && !c.groupKeys[r.key()] {
		return "", semanticErr(v.Pos, "cannot ORDER BY %s: it is not in GROUP BY", r.display)
	}
	if c.aggregated && !c.grouped {
		return "", semanticErr(v.Pos, "cannot ORDER BY %s in a COUNT() query without GROUP BY", r.display)
	}
	return c.valueSQL(r), nil
}

// rootNames are the first segments resolve accepts; an alias with one of these names cannot shadow it.
var rootNames = []string{"deviceId", "status", "connectionState", "lastActivityTime", "version", "tags", "properties"}

func isRoot(name string) bool {
	for _, r := range rootNames {
		if r == name {
			return true
		}
	}
	return false
}

// uniqueName keeps output names distinct so that callers can turn a row into a JSON object without losing
// values; the second "model" becomes "model_2".
func uniqueName(name string, used map[string]bool) string {
	candidate := name
	for n := 2; used[candidate]; n++ {
		candidate = name + "_" + strconv.Itoa(n)
	}
	used[candidate] = true
	return candidate
}

// Precedence of a compiled condition, so that parentheses are added only where SQL needs them (and around
// AND inside OR, where they make the grouping obvious to a reader).
const (
	precAtom = iota
	precAnd
	precOr
)

type frag struct {
	sql  string
	prec int
}

func atom(s string) frag { return frag{sql: s} }

// cond compiles a condition in negation normal form: NOT is pushed down to the leaves (De Morgan, and
// = becomes !=, < becomes >=, ...). This is how Azure's "undefined" survives negation: a comparison with a
// missing property is false, and so is its negation, whereas SQL's NOT(false) would be true.
func (c *compiler) cond(e Condition, neg bool) (frag, error) {
	switch e := e.(type) {
	case *And:
		return c.junction(e.Terms, !neg, neg)
	case *Or:
		return c.junction(e.Terms, neg, neg)
	case *Not:
		return c.cond(e.X, !neg)
	case *Comparison:
		r, err := c.resolve(e.Path)
		if err != nil {
			return frag{}, err
		}
		op := e.Op
		if neg {
			op = negateOp(op)
		}
		s, err := c.compare(r, op, e.Literal)
		return atom(s), err
	case *In:
		return c.in(e, neg)
	case *Call:
		return c.call(e, neg)
	case *InGroup:
		return c.inGroup(e, neg)
	}
	return frag{}, fmt.Errorf("compile condition: unexpected node %T", e)
}

// maxGroupDepth bounds how deeply dynamic groups may name other groups.
const maxGroupDepth = 8

// inGroup compiles IN_GROUP: a static group as a semi-join on its member rows, a dynamic group as its own
// condition in place (negated with the rest, so "undefined" stays false as everywhere else).
func (c *compiler) inGroup(e *InGroup, neg bool) (frag, error) {
	def, ok := c.opts.Groups[e.Name]
	if !ok {
		return frag{}, semanticErr(e.Pos, "unknown group '%s' (fleetflow group list shows the groups)", shorten(e.Name))
	}
	if slices.Contains(c.groupStack, e.Name) || len(c.groupStack) >= maxGroupDepth {
		return frag{}, semanticErr(e.Pos, "group '%s' names itself through %s", shorten(e.Name), strings.Join(c.groupStack, " → "))
	}
	c.groupsSeen[e.Name] = true
	if def.Static {
		in := "IN"
		if neg {
			in = "NOT IN"
		}
		return atom("id " + in + " (SELECT device_id FROM device_group_members WHERE group_name = " + c.param(e.Name, "text") + ")"), nil
	}
	if def.Where == nil {
		if neg {
			return atom("FALSE"), nil
		}
		return atom("TRUE"), nil
	}
	c.groupStack = append(c.groupStack, e.Name)
	f, err := c.cond(def.Where, neg)
	c.groupStack = c.groupStack[:len(c.groupStack)-1]
	if err != nil {
		return frag{}, fmt.Errorf("group '%s': %w", e.Name, err)
	}
	return f, nil
}

// GroupNames lists the groups a condition names directly (not through other groups), in order of
// appearance without repeats, so that the caller can load their definitions before compiling.
func GroupNames(e Condition) []string {
	var out []string
	var walk func(Condition)
	walk = func(e Condition) {
		switch e := e.(type) {
		case *And:
			for _, t := range e.Terms {
				walk(t)
			}
		case *Or:
			for _, t := range e.Terms {
				walk(t)
			}
		case *Not:
			walk(e.X)
		case *InGroup:
			if !slices.Contains(out, e.Name) {
				out = append(out, e.Name)
			}
		}
	}
	if e != nil {
		walk(e)
	}
	return out
}

// warn records a warning once.
func (c *compiler) warn(format string, args ...any) {
	w := fmt.Sprintf(format, args...)
	if !c.warned[w] {
		c.warned[w] = true
		c.warnings = append(c.warnings, w)
	}
}

// checkPath warns about a JSON path the scheme does not declare, naming the nearest declared one.
func (c *compiler) checkPath(r ref) {
	v := c.opts.Vocabulary
	if v == nil || !v.Covers(r.spelled) {
		return
	}
	if _, ok := v.Lookup(r.spelled); ok {
		return
	}
	if s := v.Suggest(r.spelled); s != "" {
		c.warn("%s is not in the scheme; did you mean %s?", r.spelled, s)
		return
	}
	c.warn("%s is not in the scheme", r.spelled)
}

// typed turns a literal into the type the scheme declares for the path, when the scheme declares exactly
// one scalar type and the literal's text is a value of it: tags.floor = '3' compares 3 when floor is an
// integer, so that a query cannot silently split the fleet on how a value was quoted.
func (c *compiler) typed(r ref, lit Literal) Literal {
	v := c.opts.Vocabulary
	if v == nil || !r.isPath() || lit.Kind == LitNull {
		return lit
	}
	types, ok := v.Lookup(r.spelled)
	if !ok {
		return lit
	}
	want := ""
	switch {
	case len(types) == 1:
		want = types[0]
	case len(types) == 2 && slices.Contains(types, "integer") && slices.Contains(types, "number"):
		want = "number"
	}
	out := lit
	switch want {
	case "integer", "number":
		if lit.Kind != LitString {
			return lit
		}
		n, ok := canonicalNumber(lit.Text, want == "integer")
		if !ok {
			return lit
		}
		out.Kind, out.Text = LitNumber, n
		c.warn("%s is %s in the scheme: %s compared as %s", r.spelled, article(want), lit.describe(), n)
	case "string":
		if lit.Kind == LitNumber {
			out.Kind = LitString
		} else if lit.Kind == LitBool {
			out.Kind, out.Text = LitString, strconv.FormatBool(lit.Bool)
		} else {
			return lit
		}
		c.warn("%s is a string in the scheme: %s compared as '%s'", r.spelled, lit.describe(), shorten(out.Text))
	case "boolean":
		if lit.Kind != LitString || (lit.Text != "true" && lit.Text != "false") {
			return lit
		}
		out.Kind, out.Bool = LitBool, lit.Text == "true"
		c.warn("%s is a boolean in the scheme: %s compared as %s", r.spelled, lit.describe(), lit.Text)
	}
	return out
}

func article(t string) string {
	if t == "integer" {
		return "an integer"
	}
	return "a " + t
}

// canonicalNumber reads text as a JSON number (an integer when integer is set) and returns its canonical
// decimal form, the form the lexer gives number literals.
func canonicalNumber(text string, integer bool) (string, bool) {
	if integer {
		n, err := strconv.ParseInt(strings.TrimSpace(text), 10, 64)
		if err != nil {
			return "", false
		}
		return strconv.FormatInt(n, 10), true
	}
	var n json.Number
	if err := json.Unmarshal([]byte(strings.TrimSpace(text)), &n); err != nil {
		return "", false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return "", false
	}
	return strconv.FormatFloat(f, 'f', -1, 64), true
}

// junction joins the terms (each negated when neg) with AND (conj) or OR.
func (c *compiler) junction(terms []Condition, conj, neg bool) (frag, error) {
	parts := make([]string, 0, len(terms))
	for _, t := range terms {
		f, err := c.cond(t, neg)
		if err != nil {
			return frag{}, err
		}
		parts = append(parts, f.wrapFor(conj))
	}
	if conj {
		return frag{sql: strings.Join(parts, " AND "), prec: precAnd}, nil
	}
	return frag{sql: strings.Join(parts, " OR "), prec: precOr}, nil
}

// wrapFor parenthesises a term of an AND (conj) or OR: OR inside AND needs it, AND inside OR reads better.
func (f frag) wrapFor(conj bool) string {
	if (conj && f.prec == precOr) || (!conj && f.prec == precAnd) {
		return "(" + f.sql + ")"
	}
	return f.sql
}

func negateOp(op string) string {
	switch op {
	case "=":
		return "!="
	case "!=":
		return "="
	case "<":
		return ">="
	case ">=":
		return "<"
	case ">":
		return "<="
	case "<=":
		return ">"
	}
	return op
}

func sqlOp(op string) string {
	if op == "!=" {
		return "<>"
	}
	return op
}

// compare compiles "property op literal" (op already negated if needed).
func (c *compiler) compare(r ref, op string, lit Literal) (string, error) {
	lit = c.typed(r, lit)
	switch {
	case r.kind == KindText:
		if lit.Kind != LitString {
			return "", semanticErr(lit.Pos, "%s is a string; expected a 'string' to compare it with, found %s", r.display, lit.describe())
		}
		return c.valueSQL(r) + " " + sqlOp(op) + " " + c.param(lit.Text, "text"), nil
	case r.kind == KindTime:
		ts, err := timeLiteral(r, lit)
		if err != nil {
			return "", err
		}
		return c.valueSQL(r) + " " + sqlOp(op) + " " + c.param(ts, "timestamptz"), nil
	case r.kind == KindInt:
		if lit.Kind != LitNumber {
			return "", semanticErr(lit.Pos, "%s is a number; expected a number to compare it with, found %s", r.display, lit.describe())
		}
		return c.valueSQL(r) + " " + sqlOp(op) + " " + c.param(lit.Text, "numeric"), nil
	case !r.isPath():
		return "", semanticErr(r.pos, "%s is a whole document; compare one of its properties (for example %s.name) instead",
			r.display, r.display)
	}

	if lit.Kind == LitNull {
		switch op {
		case "=", "<=", ">=":
			// JSON null equals only null; <= and >= include equality.
			if !r.indexed {
				return c.containment(r, lit)
			}
			return "jsonb_typeof(" + c.valueSQL(r) + ") = " + c.param("null", "text"), nil
		default:
			// Azure: comparing anything with null other than for equality is undefined, i.e. false.
			return "FALSE", nil
		}
	}
	if op == "=" && !r.indexed {
		return c.containment(r, lit)
	}
	switch lit.Kind {
	case LitString:
		left := c.guarded(r, "string", "")
		return left + " " + sqlOp(op) + " " + c.param(lit.Text, "text"), nil
	case LitNumber:
		left := c.guarded(r, "number", "numeric")
		return left + " " + sqlOp(op) + " " + c.param(lit.Text, "numeric"), nil
	default:
		left := c.guarded(r, "boolean", "boolean")
		return left + " " + sqlOp(op) + " " + c.param(lit.Bool, "boolean"), nil
	}
}

// guarded yields the property as a SQL value only when its JSON type is typ, NULL otherwise, so that a
// mismatched type makes the comparison undefined instead of raising a cast error.
func (c *compiler) guarded(r ref, typ, cast string) string {
	path := c.param(r.segs, "text[]")
	text := r.doc + " #>> " + path
	if cast != "" {
		text = "(" + text + ")::" + cast
	}
	return "(CASE WHEN jsonb_typeof(" + r.doc + " #> " + path + ") = " + c.param(typ, "text") + " THEN " + text + " END)"
}

// containment compiles equality with a JSON scalar as doc @> {"a":{"b":lit}}, which the GIN jsonb_path_ops
// index answers; it is exactly "the path exists through objects and its value equals lit".
func (c *compiler) containment(r ref, lit Literal) (string, error) {
	var leaf []byte
	var err error
	switch lit.Kind {
	case LitString:
		leaf, err = json.Marshal(lit.Text)
	case LitNumber:
		leaf = []byte(lit.Text)
	case LitBool:
		leaf = []byte(strconv.FormatBool(lit.Bool))
	default:
		leaf = []byte("null")
	}
	if err != nil {
		return "", fmt.Errorf("encode literal at position %d: %w", lit.Pos, err)
	}
	doc := string(leaf)
	for i := len(r.segs) - 1; i >= 0; i-- {
		k, err := json.Marshal(r.segs[i])
		if err != nil {
			return "", fmt.Errorf("encode property name of %s: %w", r.display, err)
		}
		doc = "{" + string(k) + ":" + doc + "}"
	}
	return r.doc + " @> " + c.param(doc, "jsonb"), nil
}

// timeLiteral accepts RFC 3339 (and a bare date or a zone-less time, read as UTC) and normalises it, so that
// a bad timestamp is reported with its position here rather than as a cast error from Postgres.
func timeLiteral(r ref, lit Literal) (string, error) {
	if lit.Kind == LitString {
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02"} {
			t, err := time.Parse(layout, lit.Text)
			if err == nil && t.Year() >= 1 {
				return t.UTC().Format(time.RFC3339Nano), nil
			}
		}
	}
	return "", semanticErr(lit.Pos, "%s is a time; expected an RFC 3339 time such as '2024-05-01T12:00:00Z', found %s",
		r.display, lit.describe())
}

// in compiles [NOT] IN. Text columns use = ANY(array) (one placeholder, uses the primary key for
// deviceId); JSON paths become an OR of containments so that the GIN index still applies.
func (c *compiler) in(e *In, neg bool) (frag, error) {
	r, err := c.resolve(e.Path)
	if err != nil {
		return frag{}, err
	}
	negated := e.Negated != neg
	if r.kind == KindText {
		vals := make([]string, 0, len(e.List))
		for _, lit := range e.List {
			if lit.Kind != LitString {
				return frag{}, semanticErr(lit.Pos, "%s is a string; expected only 'strings' in the IN list, found %s",
					r.display, lit.describe())
			}
			vals = append(vals, lit.Text)
		}
		if negated {
			return atom(c.valueSQL(r) + " <> ALL(" + c.param(vals, "text[]") + ")"), nil
		}
		return atom(c.valueSQL(r) + " = ANY(" + c.param(vals, "text[]") + ")"), nil
	}
	op, joiner, prec := "=", " OR ", precOr
	if negated {
		op, joiner, prec = "!=", " AND ", precAnd
	}
	parts := make([]string, 0, len(e.List))
	for _, lit := range e.List {
		s, err := c.compare(r, op, lit)
		if err != nil {
			return frag{}, err
		}
		parts = append(parts, s)
	}
	if len(parts) == 1 {
		return atom(parts[0]), nil
	}
	return frag{sql: strings.Join(parts, joiner), prec: prec}, nil
}

// call compiles the predicate functions. IS_DEFINED and IS_NULL are always true or false (never undefined),
// so plain NOT is right for them; STARTSWITH yields NULL for a non-string, which NOT keeps NULL.
func (c *compiler) call(e *Call, neg bool) (frag, error) {
	r, err := c.resolve(e.Path)
	if err != nil {
		return frag{}, err
	}
	not := func(s string) frag {
		if neg {
			return atom("NOT (" + s + ")")
		}
		return atom(s)
	}
	constant := func(b bool) frag {
		if b != neg {
			return atom("TRUE")
		}
		return atom("FALSE")
	}
	switch e.Func {
	case "IS_DEFINED":
		switch {
		case r.isPath():
			if neg {
				return atom("(" + c.valueSQL(r) + ") IS NULL"), nil
			}
			return atom("(" + c.valueSQL(r) + ") IS NOT NULL"), nil
		case r.column == "last_seen":
			if neg {
				return atom("last_seen IS NULL"), nil
			}
			return atom("last_seen IS NOT NULL"), nil
		default:
			return constant(true), nil
		}
	case "IS_NULL":
		if !r.isPath() {
			// Fixed properties are never JSON null; a device never seen has no lastActivityTime at all.
			return constant(false), nil
		}
		if !r.indexed {
			s, err := c.containment(r, Literal{Kind: LitNull})
			return not(s), err
		}
		return not("COALESCE(jsonb_typeof(" + c.valueSQL(r) + ") = " + c.param("null", "text") + ", FALSE)"), nil
	default: // STARTSWITH
		var subject string
		switch {
		case r.kind == KindText:
			subject = c.valueSQL(r)
		case r.isPath():
			subject = c.guarded(r, "string", "")
		default:
			return frag{}, semanticErr(r.pos, "STARTSWITH needs a string property, found %s", r.display)
		}
		return not("starts_with(" + subject + ", " + c.param(e.Arg.Text, "text") + ")"), nil
	}
}
