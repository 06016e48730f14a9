// Package bench holds fleetflow's benchmarks (make bench): each one measures a path of the product next to
// the raw limit measured in the same run on the same machine — Postgres COPY, hand-written SQL — and prints
// both and their ratio. They are benchmarks, not tests: they run once (-benchtime 1x) and take minutes.
package bench
