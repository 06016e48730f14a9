package main

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/manifest"
)

// rowsReader is a manifest.Reader over a slice.
type rowsReader struct {
	rows []manifest.Row
	i    int
}

func (r *rowsReader) Next() (manifest.Row, error) {
	if r.i == len(r.rows) {
		return manifest.Row{}, io.EOF
	}
	r.i++
	return r.rows[r.i-1], nil
}

// Credentials made on several goroutines come out in manifest order, across chunks, one per parsed row.
func TestCredentialsAheadKeepsManifestOrder(t *testing.T) {
	n := 2*credentialsChunk + 7
	rows := make([]manifest.Row, n)
	for i := range rows {
		rows[i] = manifest.Row{Line: int64(i + 2), ID: fmt.Sprintf("d-%05d", i)}
		if i%100 == 3 {
			rows[i].Err = "bad row"
		}
	}
	made := func(id string) (creds.Credential, []byte, []byte, *time.Time, error) {
		return creds.Credential{ID: id, Secret: "s-" + id}, []byte("digest " + id), nil, nil, nil
	}
	for _, workers := range []int{1, 3} {
		a := &credentialsAhead{src: &rowsReader{rows: rows}, make: made, workers: workers}
		for i := range n {
			e, err := a.next()
			require.NoError(t, err)
			require.Equal(t, rows[i], e.row, "row %d with %d workers", i, workers)
			if rows[i].Err != "" {
				require.Empty(t, e.cred.ID, "no credential for a row that did not parse")
				continue
			}
			require.Equal(t, rows[i].ID, e.cred.ID)
			require.Equal(t, "digest "+rows[i].ID, string(e.digest))
		}
		_, err := a.next()
		require.ErrorIs(t, err, io.EOF)
		_, err = a.next()
		require.ErrorIs(t, err, io.EOF)
	}

	boom := errors.New("no entropy")
	failing := func(id string) (creds.Credential, []byte, []byte, *time.Time, error) {
		if id == "d-00500" {
			return creds.Credential{}, nil, nil, nil, boom
		}
		return made(id)
	}
	a := &credentialsAhead{src: &rowsReader{rows: rows}, make: failing, workers: 2}
	_, err := a.next()
	require.ErrorIs(t, err, boom)
}
