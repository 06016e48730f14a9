package main

import (
	"math"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSimulateTakesAListOfGateways(t *testing.T) {
	require.Equal(t, []string{"tcp://a:1", "tcp://b:2", "ssl://c:3"},
		brokerList([]string{" tcp://a:1,tcp://b:2 ", "ssl://c:3", "tcp://a:1", ""}))

	// Comma-separated and repeated --mqtt-url add up, on the simulate command's own flag.
	root := newRoot()
	cmd, _, err := root.Find([]string{"simulate"})
	require.NoError(t, err)
	require.NoError(t, cmd.ParseFlags([]string{"--mqtt-url", "tcp://a:1,tcp://b:2", "--mqtt-url", "ssl://c:3"}))
	got, err := cmd.Flags().GetStringSlice("mqtt-url")
	require.NoError(t, err)
	require.Equal(t, "tcp://a:1 tcp://b:2 ssl://c:3", strings.Join(brokerList(got), " "))

	// The CA file (--ca-file, FLEETFLOW_MQTT_CA) applies to the TLS URLs of a mixed list.
	g := &globals{}
	g.cfg.MQTTCA = filepath.Join(t.TempDir(), "ca.pem")
	require.Equal(t, g.cfg.MQTTCA, simulateCA(g, []string{"tcp://a:1", "ssl://c:3"}))
}

// The simulator runs its collector at --gc-percent (default 100, Go's own) unless GOGC says otherwise and the
// flag is not given.
func TestSimulatorGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	root := newRoot()
	cmd, _, err := root.Find([]string{"simulate"})
	require.NoError(t, err)
	require.Equal(t, "100", cmd.Flags().Lookup("gc-percent").DefValue)

	t.Setenv("GOGC", "")
	require.True(t, setSimulatorGC(50, false))
	require.Equal(t, 50, debug.SetGCPercent(100))
	t.Setenv("GOGC", "200")
	require.False(t, setSimulatorGC(defaultSimulatorGCPercent, false), "GOGC in the environment wins over the default")
	require.Equal(t, 100, debug.SetGCPercent(100))
	require.True(t, setSimulatorGC(30, true), "the flag wins over GOGC")
	require.Equal(t, 30, debug.SetGCPercent(100))
}

// The simulator limits its memory to --memory-per-device KiB per device plus its fixed part (by default
// none), unless GOMEMLIMIT says otherwise and the flag is not given; 0 sets no limit.
func TestSimulatorMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	root := newRoot()
	cmd, _, err := root.Find([]string{"simulate"})
	require.NoError(t, err)
	require.Equal(t, "0", cmd.Flags().Lookup("memory-per-device").DefValue, "no budget unless asked for")
	require.Zero(t, setSimulatorMemoryLimit(10_000, defaultSimulatorKiBPerDevice, false))

	t.Setenv("GOMEMLIMIT", "")
	want := int64(simulatorFixedMemory + 10_000*60*1024)
	require.Equal(t, want, setSimulatorMemoryLimit(10_000, 60, false))
	require.Equal(t, want, debug.SetMemoryLimit(-1), "the runtime's limit")
	debug.SetMemoryLimit(math.MaxInt64)
	require.Zero(t, setSimulatorMemoryLimit(10_000, 0, true), "0: no limit")
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))
	t.Setenv("GOMEMLIMIT", "2GiB")
	require.Zero(t, setSimulatorMemoryLimit(10_000, 60, false), "GOMEMLIMIT in the environment wins when the flag is not given")
	require.Equal(t, want, setSimulatorMemoryLimit(10_000, 60, true), "the flag wins over GOMEMLIMIT")
}
