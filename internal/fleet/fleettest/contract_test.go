package fleettest_test

import (
	"testing"

	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
)

// TestFakeKeepsTheContract runs the store contract against the fake; internal/registry runs the same cases
// against Postgres.
func TestFakeKeepsTheContract(t *testing.T) {
	fleettest.Contract(t, func(*testing.T) fleettest.Subject { return fleettest.New().Subject() })
}
