package creds_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
)

// A rotation appends the device's new line to its credentials file, synced before Append returns; Read then
// takes each id's last line, in the order ids first appear.
func TestJournalAppendsRotatedSecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.ndjson")
	w, err := creds.Create(path)
	require.NoError(t, err)
	require.NoError(t, w.Write(creds.Credential{ID: "dev-1", Secret: "a1", Line: 2}))
	require.NoError(t, w.Write(creds.Credential{ID: "dev-2", Secret: "b1", Line: 3}))
	require.NoError(t, w.Close())

	j, err := creds.OpenJournal(path)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, j.Append(creds.Credential{ID: fmt.Sprintf("dev-%d", 3+i), Secret: "x", Secret2: "y", Slot: 2}))
		}()
	}
	wg.Wait()
	require.NoError(t, j.Append(creds.Credential{ID: "dev-1", Secret: "a1", Secret2: "a2", Slot: 2, Line: 2}))
	require.NoError(t, j.Close())

	list, err := creds.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, list, 52)
	assert.Equal(t, creds.Credential{ID: "dev-1", Secret: "a1", Secret2: "a2", Slot: 2, Line: 2}, list[0])
	assert.Equal(t, creds.Credential{ID: "dev-2", Secret: "b1", Line: 3}, list[1])
	for _, c := range list[2:] {
		assert.Equal(t, "y", c.Secret2)
	}
}
