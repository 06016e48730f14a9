package creds

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/pki"
)

func TestCredentialsFileRoundTripAndMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.ndjson")
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
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "secrets are readable by their owner only")
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

func TestCertificateCredentialsRoundTrip(t *testing.T) {
	now := time.Now()
	ca, err := pki.InitDeviceCA(t.TempDir(), "", now, 0)
	require.NoError(t, err)
	issue := func(id string) pki.DeviceCert {
		dc, err := ca.IssueDevice(id, now, time.Hour)
		require.NoError(t, err)
		return dc
	}
	c1, c2 := issue("cert-1"), issue("cert-2")
	path := filepath.Join(t.TempDir(), "c.ndjson")
	w, err := Create(path)
	require.NoError(t, err)
	in := []Credential{
		{ID: "cert-1", Cert: string(c1.CertPEM), Key: string(c1.KeyPEM), Line: 2},
		{ID: "secret-1", Secret: "s3cret", Line: 3},
		{ID: "cert-2", Cert: string(c2.CertPEM), Key: string(c2.KeyPEM)},
	}
	for _, c := range in {
		require.NoError(t, w.Write(c))
	}
	require.NoError(t, w.Close())
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, 3, strings.Count(string(raw), "\n"), "one line per credential")
	require.NotContains(t, string(raw), `"secret":""`)

	out, err := ReadFile(path)
	require.NoError(t, err)
	require.Len(t, out, 3)
	for i := range out {
		require.Equal(t, in[i].ID, out[i].ID)
		require.Equal(t, in[i].Cert, out[i].Cert)
		require.Equal(t, in[i].Key, out[i].Key)
		require.Equal(t, in[i].Secret, out[i].Secret)
	}
	require.Nil(t, out[1].TLS)
	require.NotNil(t, out[0].TLS)
	require.Equal(t, "cert-1", out[0].TLS.Leaf.Subject.CommonName)
	require.Equal(t, c1.Fingerprint, pki.Fingerprint(out[0].TLS.Leaf))

	for name, c := range map[string]Credential{
		"key of another certificate": {ID: "cert-1", Cert: string(c1.CertPEM), Key: string(c2.KeyPEM)},
		"certificate of another id":  {ID: "cert-1", Cert: string(c2.CertPEM), Key: string(c2.KeyPEM)},
		"certificate without key":    {ID: "cert-1", Cert: string(c1.CertPEM)},
	} {
		bad := filepath.Join(t.TempDir(), "bad.ndjson")
		w, err := Create(bad)
		require.NoError(t, err)
		require.NoError(t, w.Write(c))
		require.NoError(t, w.Close())
		_, err = ReadFile(bad)
		require.ErrorContains(t, err, "line 1", name)
	}
}

func TestCreateRefusesAnExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.ndjson")
	require.NoError(t, os.WriteFile(path, []byte("earlier secrets\n"), 0o600))
	_, err := Create(path)
	require.ErrorIs(t, err, ErrExists)
	require.Contains(t, err.Error(), "only copy")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "earlier secrets\n", string(b), "an existing credentials file is never truncated")
}

func TestPublishNeverReplacesAnExistingFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "c.pending"), filepath.Join(dir, "c.ndjson")
	write := func() {
		w, err := Create(src)
		require.NoError(t, err)
		require.NoError(t, w.Write(Credential{ID: "dev-1", Secret: "s1"}))
		require.NoError(t, w.Close())
	}
	write()
	require.NoError(t, Publish(src, dst))
	_, err := os.Stat(src)
	require.ErrorIs(t, err, os.ErrNotExist, "the source is gone once published")
	got, err := ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, []Credential{{ID: "dev-1", Secret: "s1"}}, got)

	// A second run aimed at the same path: refused, both files intact.
	require.NoError(t, os.WriteFile(src, []byte(`{"id":"dev-2","secret":"s2"}`+"\n"), 0o600))
	err = Publish(src, dst)
	require.ErrorIs(t, err, ErrExists)
	require.Contains(t, err.Error(), src, "the message says where the new secrets are")
	got, err = ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, "dev-1", got[0].ID)
	again, err := ReadFile(src)
	require.NoError(t, err)
	require.Equal(t, "dev-2", again[0].ID)
}

func TestReadLooseSkipsLinesWithoutACredential(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.pending")
	body := `{"id":"dev-1","secret":"s1","line":2}` + "\n" + `{"id":"","secret":"s2","line":3}` + "\n\n" +
		`not json` + "\n" + `{"id":"dev-4","secret":"s4","line":5}` + "\n"
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	_, err := ReadFile(path)
	require.Error(t, err, "the strict reader refuses the file")
	got, skipped, err := ReadLoose(path)
	require.NoError(t, err)
	require.Equal(t, 2, skipped)
	require.Equal(t, []Credential{{ID: "dev-1", Secret: "s1", Line: 2}, {ID: "dev-4", Secret: "s4", Line: 5}}, got)
}
