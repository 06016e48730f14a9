// Package query implements fleetflow's twin query language, the subset of the Azure IoT Hub query language
// that operators already know:
//
//	SELECT [TOP n] * | expr [AS alias], ... FROM devices [WHERE cond] [GROUP BY expr, ...] [ORDER BY expr [ASC|DESC], ...]
//
// It compiles a query to one parameterized Postgres statement over the devices table instead of evaluating
// twins in Go, because the registry holds up to a million twins and only Postgres, with its GIN index on
// tags, can answer a selective query in milliseconds (measured in docs/benchmarks.md). Three rules shape the translation:
//
//   - Nothing from the query text reaches the SQL text: literals, JSON path segments and even the constant
//     words the SQL needs ('retired', 'number', ...) are arguments, so the SQL contains no quote at all and
//     injection is impossible by construction rather than by escaping.
//   - Equality with a JSON scalar becomes containment (tags @> {"a":{"b":v}}), which the jsonb_path_ops index
//     answers; other comparisons are guarded by jsonb_typeof so that, as in Azure, a missing property or one
//     of another JSON type matches nothing (not even !=) and never raises a cast error.
//   - Retired devices are hidden unless the WHERE clause mentions status, because they stay in the registry
//     for audit but are no longer part of the fleet.
//
// String comparisons other than equality (<, >, STARTSWITH) use the database's default collation.
// The package is pure Go (no database imports) so that it is tested without a server; the registry runs the
// statements.
package query
