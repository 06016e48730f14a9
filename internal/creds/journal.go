package creds

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Journal appends credentials to an existing credentials file, each synced to disk before Append returns:
// a device (or the simulator on its behalf) must not acknowledge a new secret it could lose
// (docs/architecture.md, "Credential rotation"). Appends that arrive together share one write and one
// fsync, so that a fleet rotating at once does not cost one fsync per device. Read takes an id's last line.
type Journal struct {
	f *os.File

	mu      sync.Mutex
	pending []byte
	waiters []chan error
	syncing bool
}

// OpenJournal opens path, which must exist, for appending.
func OpenJournal(path string) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, fmt.Errorf("open credentials file for rotated secrets: %w", err)
	}
	return &Journal{f: f}, nil
}

// Append writes c as the id's newest line and returns once it is on disk.
func (j *Journal) Append(c Credential) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode credentials of %s: %w", c.ID, err)
	}
	ch := make(chan error, 1)
	j.mu.Lock()
	j.pending = append(append(j.pending, b...), '\n')
	j.waiters = append(j.waiters, ch)
	if !j.syncing {
		j.syncing = true
		go j.flush()
	}
	j.mu.Unlock()
	return <-ch
}

// flush writes and syncs what has been appended until nothing is left.
func (j *Journal) flush() {
	for {
		j.mu.Lock()
		buf, ws := j.pending, j.waiters
		j.pending, j.waiters = nil, nil
		if len(ws) == 0 {
			j.syncing = false
			j.mu.Unlock()
			return
		}
		j.mu.Unlock()
		_, err := j.f.Write(buf)
		if err == nil {
			err = j.f.Sync()
		}
		if err != nil {
			err = fmt.Errorf("append credentials: %w", err)
		}
		for _, w := range ws {
			w <- err
		}
	}
}

// Close closes the file; appends still waiting are answered first.
func (j *Journal) Close() error {
	for {
		j.mu.Lock()
		idle := !j.syncing
		j.mu.Unlock()
		if idle {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return j.f.Close()
}
