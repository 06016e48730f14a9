package simulator_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/simulator"
)

func TestParseVersionFraction(t *testing.T) {
	for in, want := range map[string]struct {
		version  string
		fraction float64
	}{
		"2.0.0=0.1":       {"2.0.0", 0.1},
		"2.0.0=1":         {"2.0.0", 1},
		"2.0.0=0":         {"2.0.0", 0},
		" 2.0.0 = 0.25 ":  {"2.0.0", 0.25},
		"2.0.0-rc.1=10%":  {"2.0.0-rc.1", 0.1},
		"v3=100%":         {"v3", 1},
		"1.2.3+build=.5":  {"1.2.3+build", 0.5},
		"2.0.0=0.0000001": {"2.0.0", 1e-7},
	} {
		v, f, err := simulator.ParseVersionFraction(in)
		require.NoError(t, err, in)
		assert.Equal(t, want.version, v, in)
		assert.InDelta(t, want.fraction, f, 1e-12, in)
	}
	for in, msg := range map[string]string{
		"2.0.0":        "want VERSION=FRACTION",
		"":             "want VERSION=FRACTION",
		"=0.1":         "empty version",
		"2.0.0=":       "not a number",
		"2.0.0=abc":    "not a number",
		"2.0.0=1.5":    "outside 0..1",
		"2.0.0=-0.1":   "outside 0..1",
		"2.0.0=150%":   "outside 0..1",
		"2.0.0=NaN":    "outside 0..1",
		"2.0.0=Inf":    "outside 0..1",
		"2.0.0=0.1=2":  "not a number",
		"2 .0=0.1":     "contains a space",
		"2.0.0,3=0.1":  "contains a space, ','",
		"2.0.0=0.1abc": "not a number",
	} {
		_, _, err := simulator.ParseVersionFraction(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), msg, in)
		assert.Contains(t, err.Error(), fmt.Sprintf("%q", in), "the error quotes the bad value")
	}
}

// VersionFractions is what --fail-install and --unhealthy parse into: repeatable, with clear errors.
func TestVersionFractionsFlagValue(t *testing.T) {
	var v simulator.VersionFractions
	assert.Equal(t, "", v.String())
	assert.Equal(t, "VERSION=FRACTION", v.Type())
	require.NoError(t, v.Set("2.0.0=0.1"))
	require.NoError(t, v.Set("1.9.0=50%"))
	assert.Equal(t, simulator.VersionFractions{"2.0.0": 0.1, "1.9.0": 0.5}, v)
	assert.Equal(t, "1.9.0=0.5,2.0.0=0.1", v.String())
	require.ErrorContains(t, v.Set("2.0.0=0.2"), "given twice")
	require.ErrorContains(t, v.Set("2.0.0"), "VERSION=FRACTION")
	assert.Len(t, v, 2, "a refused value changes nothing")
}

func TestFractionSelectionIsDeterministic(t *testing.T) {
	const n = 20_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	count := func(f func(id string) bool) (c int) {
		for _, id := range ids {
			if f(id) {
				c++
			}
		}
		return c
	}
	within := func(got int, fraction float64) {
		t.Helper()
		mean := fraction * n
		sigma := math.Sqrt(n * fraction * (1 - fraction))
		assert.InDelta(t, mean, float64(got), 5*sigma, "fraction %v", fraction)
	}
	for _, fraction := range []float64{0.01, 0.1, 0.3, 0.5, 0.9} {
		within(count(func(id string) bool { return simulator.InstallFails(7, id, "2.0.0", fraction) }), fraction)
		within(count(func(id string) bool { return simulator.TurnsUnhealthy(7, id, "2.0.0", fraction) }), fraction)
	}
	assert.Zero(t, count(func(id string) bool { return simulator.InstallFails(7, id, "2.0.0", 0) }))
	assert.Equal(t, n, count(func(id string) bool { return simulator.InstallFails(7, id, "2.0.0", 1) }))

	// The same inputs always give the same answer; raising the fraction only adds devices.
	for _, id := range ids[:2000] {
		a := simulator.InstallFails(7, id, "2.0.0", 0.2)
		assert.Equal(t, a, simulator.InstallFails(7, id, "2.0.0", 0.2))
		if a {
			assert.True(t, simulator.InstallFails(7, id, "2.0.0", 0.3), id)
		}
	}
	// Seed, version and behaviour each draw differently: overlaps are what independence predicts.
	both := func(f, g func(string) bool) int {
		return count(func(id string) bool { return f(id) && g(id) })
	}
	fails := func(seed int64, version string) func(string) bool {
		return func(id string) bool { return simulator.InstallFails(seed, id, version, 0.5) }
	}
	within(both(fails(7, "2.0.0"), fails(8, "2.0.0")), 0.25)
	within(both(fails(7, "2.0.0"), fails(7, "2.0.1")), 0.25)
	within(both(fails(7, "2.0.0"), func(id string) bool { return simulator.TurnsUnhealthy(7, id, "2.0.0", 0.5) }), 0.25)
}
