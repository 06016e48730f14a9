package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/manifest"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// A row that cannot become a device (here an empty id, which parses) gets no credential at all.
func TestCredentialsAheadGivesInvalidRowsNoCredential(t *testing.T) {
	rows := []manifest.Row{{Line: 2, ID: "dev-1", Tags: []byte(`{}`)}, {Line: 3, ID: "", Tags: []byte(`{}`)},
		{Line: 4, ID: "Bad ID", Tags: []byte(`{}`)}, {Line: 5, ID: "dev-4"}}
	a := &credentialsAhead{src: &rowsReader{rows: rows}, make: newSecretCredential, workers: 1}
	var got []equipped
	for range rows {
		e, err := a.next()
		require.NoError(t, err)
		got = append(got, e)
	}
	require.Equal(t, "dev-1", got[0].cred.ID)
	require.Equal(t, "missing id", got[1].row.Err)
	require.Empty(t, got[1].cred.Secret)
	require.NotEmpty(t, got[2].row.Err)
	require.Empty(t, got[2].cred.Secret)
	require.Empty(t, got[3].row.Err, "a row without tags is staged with {}")
	require.Equal(t, "dev-4", got[3].cred.ID)
}

func TestCredsPathsFreeRefusesAnExistingFileOrPending(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "a.creds.ndjson")
	require.NoError(t, credsPathsFree(out, "provision"))
	require.NoError(t, os.WriteFile(out, []byte("x"), 0o600))
	err := credsPathsFree(out, "provision")
	require.ErrorContains(t, err, "never overwritten")
	require.NoError(t, os.Remove(out))
	require.NoError(t, os.WriteFile(out+".pending", []byte("x"), 0o600))
	err = credsPathsFree(out, "replace")
	require.ErrorContains(t, err, "fleetflow replace --resume")
}

// The issue's case: a manifest with an empty id among good rows. The good rows are provisioned, the bad one
// is reported by line, and the credentials file holds exactly the created devices; a second run aimed at the
// same --creds-out is refused and keeps its own secrets pending.
func TestManifestWithAnEmptyIDStillWritesEveryCreatedDevicesCredentials(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "fleet.creds.ndjson")

	run := func(op, csv string) (int, error) {
		r, err := manifest.NewReader(bufio.NewReader(strings.NewReader(csv)), manifest.CSV)
		require.NoError(t, err)
		pending := out + ".pending"
		rows, err := stageManifest(ctx, reg, op, r, pending, newSecretCredential, 1, 0, nil)
		require.NoError(t, err)
		_, err = reg.ProvisionBatch(ctx, op, 0, rows, 0)
		require.NoError(t, err)
		return finalizeCreds(ctx, reg, op, pending, out)
	}
	csv := "\xef\xbb\xbfid,site\r\ndev-1,\"ber, 1\"\r\n,ber-2\r\ndev-3,ber-3\r\n\r\n,\r\n"
	kept, err := run("provision-a", csv)
	require.NoError(t, err)
	require.Equal(t, 2, kept)
	cs, err := creds.ReadFile(out)
	require.NoError(t, err)
	require.Len(t, cs, 2)
	require.Equal(t, []string{"dev-1", "dev-3"}, []string{cs[0].ID, cs[1].ID})
	for _, c := range cs {
		a, err := reg.DeviceAuth(ctx, c.ID)
		require.NoError(t, err)
		require.True(t, creds.Matches(c.Secret, a.Secret1Hash), "the file's secret is the registered one for %s", c.ID)
	}
	issues, err := reg.ProvisionResults(ctx, "provision-a", "invalid", 10)
	require.NoError(t, err)
	require.Len(t, issues, 1)
	require.Equal(t, int64(3), issues[0].Line)
	require.Equal(t, "missing id", issues[0].Reason)
	_, err = os.Stat(out + ".pending")
	require.ErrorIs(t, err, os.ErrNotExist)

	// The same path again: the earlier file is untouched, the new secrets stay pending.
	_, err = run("provision-b", "id\ndev-9\n")
	require.ErrorIs(t, err, creds.ErrExists)
	again, err := creds.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, cs, again)
	pending, err := creds.ReadFile(out + ".pending")
	require.NoError(t, err)
	require.Len(t, pending, 1)
	require.Equal(t, "dev-9", pending[0].ID)

	// Another run's file at the path is never taken for this run's (publishCreds accepts only identical content).
	require.NoError(t, os.Rename(out, out+".b"))
	_, err = finalizeCreds(ctx, reg, "provision-b", out+".pending", out+".b")
	require.ErrorIs(t, err, creds.ErrExists, "a different file at the path is never taken for this run's")
	require.NoError(t, os.Remove(out+".b"))
}

// A pending file an older CLI wrote, with a secret for a row whose id was empty, no longer stops --resume.
func TestFinalizeReadsALegacyPendingFileLoosely(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	out := filepath.Join(t.TempDir(), "old.creds.ndjson")
	i := 0
	ids := []string{"dev-1", "", "dev-3"}
	_, err = reg.StageRows(ctx, "provision-old", "provision", func() (registry.StagedRow, bool, error) {
		if i == len(ids) {
			return registry.StagedRow{}, false, nil
		}
		i++
		return registry.StagedRow{Seq: int64(i - 1), Line: int64(i + 1), ID: ids[i-1], Tags: "{}",
			SecretHash: creds.Digest("s-" + ids[i-1])}, true, nil
	})
	require.NoError(t, err)
	_, err = reg.ProvisionBatch(ctx, "provision-old", 0, 3, 0)
	require.NoError(t, err)
	var body strings.Builder
	for n, id := range ids {
		fmt.Fprintf(&body, `{"id":%q,"secret":"s-%s","line":%d}`+"\n", id, id, n+2)
	}
	require.NoError(t, os.WriteFile(out+".pending", []byte(body.String()), 0o600))
	kept, err := finalizeCreds(ctx, reg, "provision-old", out+".pending", out)
	require.NoError(t, err)
	require.Equal(t, 2, kept)
	cs, err := creds.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "dev-3", cs[1].ID)
}

func TestPublishCredsAcceptsTheSameRunsFileWrittenBefore(t *testing.T) {
	dir := t.TempDir()
	src, out := filepath.Join(dir, "x.pending"), filepath.Join(dir, "x.creds.ndjson")
	body := `{"id":"dev-1","secret":"s1"}` + "\n"
	require.NoError(t, os.WriteFile(src, []byte(body), 0o600))
	require.NoError(t, os.WriteFile(out, []byte(body), 0o600))
	require.NoError(t, publishCreds(src, src, out))
	_, err := os.Stat(src)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, os.WriteFile(src, []byte(`{"id":"dev-2","secret":"s2"}`+"\n"), 0o600))
	require.ErrorIs(t, publishCreds(src, src, out), creds.ErrExists)
}

// Certificates follow the secrets' rules: a row with an empty id gets no key, the file holds exactly the
// created devices' certificates and keys, and an existing file is never replaced.
func TestCertificateCredentialsFollowTheSameRules(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	caDir := t.TempDir()
	_, err = pki.InitDeviceCA(caDir, "test fleet", time.Now(), 24*time.Hour*365)
	require.NoError(t, err)
	makeCert, _, err := certificateMaker(caDir, "30d")
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "x.creds.ndjson")
	r, err := manifest.NewReader(strings.NewReader("{\"id\":\"x-1\"}\n\n{\"id\":\"\"}\n{\"id\":\"x-3\"}\n"), manifest.NDJSON)
	require.NoError(t, err)
	rows, err := stageManifest(ctx, reg, "provision-x", r, out+".pending", makeCert, 2, 0, nil)
	require.NoError(t, err)
	require.Equal(t, int64(3), rows)
	_, err = reg.ProvisionBatch(ctx, "provision-x", 0, rows, 0)
	require.NoError(t, err)
	kept, err := finalizeCreds(ctx, reg, "provision-x", out+".pending", out)
	require.NoError(t, err)
	require.Equal(t, 2, kept)
	cs, err := creds.ReadFile(out) // parses each certificate and checks it names its device
	require.NoError(t, err)
	require.Len(t, cs, 2)
	require.NotNil(t, cs[1].TLS)
	require.Equal(t, "x-3", cs[1].ID)
	require.Empty(t, cs[1].Secret)
	// Each certificate's end is recorded with its fingerprint, as the certificate states it.
	for _, c := range cs {
		d, err := reg.GetDevice(ctx, c.ID)
		require.NoError(t, err)
		require.NotNil(t, d.CertNotAfter, c.ID)
		require.True(t, c.TLS.Leaf.NotAfter.Equal(*d.CertNotAfter), "%s: recorded %s, the certificate says %s", c.ID, d.CertNotAfter, c.TLS.Leaf.NotAfter)
	}
}

// A manifest staged in chunks: when each chunk commits (and a workflow may create its devices), the secret of
// every row committed so far is already in the pending file, synced, and is the one the registry will know.
func TestChunkedStagingHasEverySecretOnDiskBeforeItsChunkCommits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, err := registry.Open(ctx, testenv.Postgres(t))
	require.NoError(t, err)
	defer reg.Close()
	defer func(n int) { stagingChunk = n }(stagingChunk)
	stagingChunk = 3
	pending := filepath.Join(t.TempDir(), "c.creds.ndjson.pending")
	r, err := manifest.NewReader(strings.NewReader("id\nc-1\nc-2\nc-3\nc-4\nc-5\nc-6\nc-7\nc-8\n"), manifest.CSV)
	require.NoError(t, err)
	var commits []int64
	rows, err := stageManifest(ctx, reg, "provision-c", r, pending, newSecretCredential, 1, 0, func(staged int64, done bool) error {
		prev := int64(0)
		if len(commits) > 0 {
			prev = commits[len(commits)-1]
		}
		commits = append(commits, staged)
		onDisk, _, err := creds.ReadLoose(pending)
		require.NoError(t, err)
		require.GreaterOrEqual(t, int64(len(onDisk)), staged, "every committed row's secret is on disk")
		c, err := reg.ProvisionBatch(ctx, "provision-c", prev, staged, 0)
		require.NoError(t, err)
		require.Equal(t, staged-prev, c.Created)
		for _, c := range onDisk[:staged] {
			a, err := reg.DeviceAuth(ctx, c.ID)
			require.NoError(t, err)
			require.True(t, creds.Matches(c.Secret, a.Secret1Hash), "%s's secret on disk is the registered one", c.ID)
		}
		require.Equal(t, staged == 8, done)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, int64(8), rows)
	require.Equal(t, []int64{3, 6, 8}, commits)
}
