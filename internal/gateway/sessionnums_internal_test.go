package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// CONNECTs that arrive while a query is in flight share the next one: 50 concurrent callers cost at most a
// few round trips, each caller gets a distinct number, and the numbers follow the order of the queries.
func TestSessionNumbersAreBatched(t *testing.T) {
	var mu sync.Mutex
	var last int64
	var sizes []int
	release := make(chan struct{})
	alloc := func(ctx context.Context, n int) ([]int64, error) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		<-release
		mu.Lock()
		defer mu.Unlock()
		out := make([]int64, n)
		for i := range out {
			last++
			out[i] = last
		}
		return out, nil
	}
	nums := newSessionNums(alloc, time.Second)
	const callers = 50
	got := make([]int64, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := nums.next()
			assert.NoError(t, err)
			got[i] = n
		}()
	}
	// Let every caller either be in the first query or queue behind it before that query returns.
	require.Eventually(t, func() bool {
		mu.Lock()
		first := 0
		if len(sizes) > 0 {
			first = sizes[0]
		}
		mu.Unlock()
		nums.mu.Lock()
		defer nums.mu.Unlock()
		return first > 0 && first+len(nums.waiting) == callers
	}, 5*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	seen := map[int64]bool{}
	for _, n := range got {
		require.False(t, seen[n], "number %d given twice", n)
		require.Positive(t, n)
		seen[n] = true
	}
	assert.LessOrEqual(t, len(sizes), 2, "query sizes %v", sizes)
	assert.Equal(t, int64(len(sizes)), nums.queries)
}

// A failed query fails every CONNECT waiting on it, and the next CONNECT queries again.
func TestSessionNumberErrors(t *testing.T) {
	fail := true
	var calls int
	alloc := func(ctx context.Context, n int) ([]int64, error) {
		calls++
		if fail {
			return nil, errors.New("registry down")
		}
		return []int64{7}, nil
	}
	nums := newSessionNums(alloc, time.Second)
	_, err := nums.next()
	require.ErrorContains(t, err, "registry down")
	fail = false
	n, err := nums.next()
	require.NoError(t, err)
	require.Equal(t, int64(7), n)
	require.Equal(t, 2, calls)
}

// A CONNECT authenticated before the one it takes over gets a new number larger than that session's; one
// already above it keeps its number.
func TestTakeoverRenumbersAnOlderNumber(t *testing.T) {
	var last int64 = 100
	alloc := func(ctx context.Context, n int) ([]int64, error) {
		out := make([]int64, n)
		for i := range out {
			last++
			out[i] = last
		}
		return out, nil
	}
	g := &Gateway{nums: newSessionNums(alloc, time.Second), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	early, late := &mqtt.Client{ID: "d"}, &mqtt.Client{ID: "d"}
	g.nums.hold(early, 50, 1)
	g.renumber(early, 60) // the session it takes over has 60
	n, _, ok := g.nums.take(early)
	require.True(t, ok)
	require.Equal(t, int64(101), n)

	g.nums.hold(late, 70, 1)
	g.renumber(late, 60)
	n, _, ok = g.nums.take(late)
	require.True(t, ok)
	require.Equal(t, int64(70), n)
}
