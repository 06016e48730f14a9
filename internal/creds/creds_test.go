package creds

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCredentialsFileRoundTripAndMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.ndjson")
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	w, err := Create(path)
	require.NoError(t, err)
	s1, err := NewSecret()
	require.NoError(t, err)
	s2, err := NewSecret()
	require.NoError(t, err)
	require.NotEqual(t, s1, s2)
	require.Len(t, s1, 43)
	in := []Credential{{ID: "dev-1", Secret: s1, Line: 2}, {ID: `we"ird\id`, Secret: s2}}
	for _, c := range in {
		require.NoError(t, w.Write(c))
	}
	require.Equal(t, 2, w.Count())
	require.NoError(t, w.Close())
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "an existing file loses its old mode")
	out, err := ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, in, out)
}

func TestDigestMatches(t *testing.T) {
	d := Digest("s3cret")
	require.Len(t, d, 32)
	require.True(t, Matches("s3cret", d))
	require.False(t, Matches("s3cret!", d))
	require.False(t, Matches("s3cret", d[:31]))
	require.False(t, Matches("s3cret", nil))
}

func TestReadRejectsIncompleteLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.ndjson")
	require.NoError(t, os.WriteFile(path, []byte("{\"id\":\"a\",\"secret\":\"b\"}\n\n{\"id\":\"c\"}\n"), 0o600))
	_, err := ReadFile(path)
	require.ErrorContains(t, err, "line 3")
}
