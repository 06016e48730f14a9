package main

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

func TestDurationFlagTakesAnyDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"0": 0, "90s": 90 * time.Second, "48h": 48 * time.Hour, "7d": 7 * 24 * time.Hour,
		"400d": 400 * 24 * time.Hour} {
		var d time.Duration
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.Var(newDurationFlag(&d, "timeout"), "timeout", "")
		require.NoError(t, fs.Parse([]string{"--timeout", in}), in)
		require.Equal(t, want, d, in)
	}
	var d time.Duration
	f := newDurationFlag(&d, "await-connect")
	require.ErrorContains(t, f.Set("soon"), `--await-connect "soon"`)
	require.ErrorContains(t, f.Set("-5m"), "must be > 0")
	require.Equal(t, "0s", f.String())
	require.NoError(t, f.Set("2d"))
	require.Equal(t, "2d", f.String())
}
