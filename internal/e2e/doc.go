// Package e2e holds end-to-end tests of fleetflow: the real CLI and worker binaries, a real Postgres, a real
// Temporal dev server and the real gateway with MQTT devices, all on loopback and stopped when the tests end.
package e2e
