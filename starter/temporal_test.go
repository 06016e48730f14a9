package main

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIsTerminal(t *testing.T) {
	// /dev/null is a character device, which the old check took for a terminal.
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer func() { _ = null.Close() }()
	require.False(t, isTerminal(null), "/dev/null is not a terminal")

	f, err := os.Create(t.TempDir() + "/out.log")
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	require.False(t, isTerminal(f), "a regular file is not a terminal")

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer func() { _ = r.Close(); _ = w.Close() }()
	require.False(t, isTerminal(w), "a pipe is not a terminal")
}
