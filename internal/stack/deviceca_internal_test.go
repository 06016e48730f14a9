package stack

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// The gateway dev up starts trusts the fleet CA of `fleetflow ca init` once .fleetflow/ca/ca.pem exists,
// unless FLEETFLOW_DEVICE_CA names another.
func TestChildEnvPassesTheFleetCA(t *testing.T) {
	t.Setenv("FLEETFLOW_DEVICE_CA", "")
	root := t.TempDir()
	s, err := New(Options{Root: root})
	require.NoError(t, err)
	hasCA := func(want string) bool {
		env, err := s.childEnv()
		require.NoError(t, err)
		return slices.Contains(env, "FLEETFLOW_DEVICE_CA="+want)
	}
	ca := filepath.Join(root, ".fleetflow", "ca", "ca.pem")
	require.False(t, hasCA(ca), "no CA yet")
	require.NoError(t, os.MkdirAll(filepath.Dir(ca), 0o700))
	require.NoError(t, os.WriteFile(ca, []byte("pem"), 0o644))
	require.True(t, hasCA(ca))

	s.opts.Config.DeviceCA = "/etc/fleetflow/device-ca.pem"
	require.False(t, hasCA(ca), "the operator's choice wins")
}
