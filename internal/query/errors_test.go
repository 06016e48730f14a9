package query

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type errorCase struct {
	name     string
	q        string
	syntax   bool // *SyntaxError, else *SemanticError
	pos      int
	contains []string
}

// errorCases pin down that every error names where the problem is, what was expected and what was found.
// They also seed FuzzCompile.
var errorCases = []errorCase{
	{
		name: "empty query", q: "", syntax: true, pos: 1,
		contains: []string{"syntax error at position 1: expected SELECT", "found end of query"},
	},
	{
		name: "missing FROM", q: "SELECT * devices", syntax: true, pos: 10,
		contains: []string{"expected FROM after '*', found 'devices'"},
	},
	{
		name: "missing FROM after a property", q: "SELECT deviceId WHERE status = 'active'", syntax: true, pos: 17,
		contains: []string{"expected ',', AS or FROM after 'deviceId', found 'WHERE'"},
	},
	{
		name: "FROM another collection", q: "SELECT * FROM devices.modules", syntax: true, pos: 22,
		contains: []string{"expected WHERE, GROUP BY, ORDER BY or end of query after 'devices', found '.'"},
	},
	{
		name: "FROM other", q: "SELECT * FROM jobs", syntax: true, pos: 15,
		contains: []string{"expected devices (the only collection) after 'FROM', found 'jobs'"},
	},
	{
		name: "unterminated string", q: "SELECT * FROM devices WHERE tags.region = 'eu", syntax: true, pos: 43,
		contains: []string{"expected a closing ' for the string that starts here, found end of query"},
	},
	{
		name: "value missing after =", q: "SELECT * FROM devices WHERE tags.a = AND tags.b = 1", syntax: true, pos: 38,
		contains: []string{"syntax error at position 38: expected a value", "after '=', found 'AND'"},
	},
	{
		name: "trailing tokens", q: "SELECT * FROM devices WHERE tags.a = 1 tags.b = 2", syntax: true, pos: 40,
		contains: []string{"expected AND, OR, GROUP BY, ORDER BY or end of query after '1', found 'tags'"},
	},
	{
		name: "trailing semicolon", q: "SELECT * FROM devices;", syntax: true, pos: 22,
		contains: []string{"found ';'"},
	},
	{
		name: "IN without a list", q: "SELECT * FROM devices WHERE tags.a IN 'x'", syntax: true, pos: 39,
		contains: []string{"expected '(' and a list of values after 'IN', found string 'x'"},
	},
	{
		name: "empty IN list", q: "SELECT * FROM devices WHERE tags.a IN ()", syntax: true, pos: 40,
		contains: []string{"expected a value", "found ')'"},
	},
	{
		name: "unclosed parenthesis", q: "SELECT * FROM devices WHERE (tags.a = 1 OR tags.b = 2", syntax: true, pos: 54,
		contains: []string{"to close the '(' at position 29", "found end of query"},
	},
	{
		name: "TOP without a number", q: "SELECT TOP * FROM devices", syntax: true, pos: 12,
		contains: []string{"expected a whole number after 'TOP', found '*'"},
	},
	{
		name: "TOP zero", q: "SELECT TOP 0 * FROM devices", pos: 12,
		contains: []string{"invalid query at position 12: TOP must be at least 1, found 0"},
	},
	{
		name: "TOP too large", q: "SELECT TOP 123456789012345678901234 * FROM devices", pos: 12,
		contains: []string{"is too large"},
	},
	{
		name: "unknown root", q: "SELECT * FROM devices WHERE foo.bar = 1", pos: 29,
		contains: []string{"unknown property root 'foo' in foo.bar", "valid roots are deviceId, status, connectionState", "properties.reported"},
	},
	{
		name: "wrong case of a root", q: "SELECT DeviceId FROM devices", pos: 8,
		contains: []string{"did you mean deviceId?"},
	},
	{
		name: "properties without a section", q: "SELECT properties.tags FROM devices", pos: 8,
		contains: []string{"expected properties.desired or properties.reported, found properties.tags"},
	},
	{
		name: "GROUP BY does not cover the selection", q: "SELECT deviceId, COUNT() FROM devices GROUP BY tags.region", pos: 8,
		contains: []string{"deviceId is selected but not in GROUP BY"},
	},
	{
		name: "COUNT() with a property but no GROUP BY", q: "SELECT tags.region, COUNT() FROM devices", pos: 8,
		contains: []string{"no GROUP BY; add GROUP BY tags.region"},
	},
	{
		name: "ORDER BY outside GROUP BY", q: "SELECT tags.a, COUNT() FROM devices GROUP BY tags.a ORDER BY tags.b", pos: 62,
		contains: []string{"cannot ORDER BY tags.b: it is not in GROUP BY"},
	},
	{
		name: "string column compared with a number", q: "SELECT * FROM devices WHERE status = 1", pos: 38,
		contains: []string{"status is a string; expected a 'string' to compare it with, found number 1"},
	},
	{
		name: "bad timestamp", q: "SELECT * FROM devices WHERE lastActivityTime > 'yesterday'", pos: 48,
		contains: []string{"expected an RFC 3339 time", "found string 'yesterday'"},
	},
	{
		name: "unknown function", q: "SELECT * FROM devices WHERE ENDSWITH(deviceId, 'x')", syntax: true, pos: 29,
		contains: []string{"expected one of the functions IS_DEFINED, IS_NULL, STARTSWITH or IN_GROUP, found 'ENDSWITH'"},
	},
	{
		name: "comparing two properties", q: "SELECT * FROM devices WHERE tags.a = tags.b", syntax: true, pos: 38,
		contains: []string{"comparing two properties is not supported"},
	},
	{
		name: "comment sequence", q: "SELECT * FROM devices -- all", syntax: true, pos: 23,
		contains: []string{"found '-'"},
	},
	{
		name: "too long", q: "SELECT * FROM devices WHERE tags.a = '" + strings.Repeat("x", MaxQueryLength) + "'",
		contains: []string{"characters long; the limit is 8192"},
	},
	{
		name: "nesting too deep", q: "SELECT * FROM devices WHERE " + strings.Repeat("NOT ", 100) + "tags.a = 1", syntax: true,
		pos: 28 + 4*64 + 1, contains: []string{"expected at most 64 nested"},
	},
	{
		name: "position counts characters, not bytes", q: "SELECT * FROM devices WHERE tags.ü = 1", syntax: true, pos: 34,
		contains: []string{"found 'ü'"},
	},
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.q, Options{})
			require.Error(t, err)
			if tc.syntax {
				var se *SyntaxError
				require.True(t, errors.As(err, &se), "want *SyntaxError, got %T: %v", err, err)
				assert.Equal(t, tc.pos, se.Pos, err.Error())
			} else {
				var se *SemanticError
				require.True(t, errors.As(err, &se), "want *SemanticError, got %T: %v", err, err)
				assert.Equal(t, tc.pos, se.Pos, err.Error())
			}
			for _, s := range tc.contains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}
