package fleetworker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleetworker"
)

func TestProbes(t *testing.T) {
	// The handlers run on the server's goroutines: the failures they report are set under a lock.
	var (
		mu                       sync.Mutex
		temporalErr, registryErr error
	)
	set := func(tErr, rErr error) { mu.Lock(); temporalErr, registryErr = tErr, rErr; mu.Unlock() }
	p := &fleetworker.Probes{
		Temporal: func(context.Context) error { mu.Lock(); defer mu.Unlock(); return temporalErr },
		Registry: func(context.Context) error { mu.Lock(); defer mu.Unlock(); return registryErr },
	}
	mux := http.NewServeMux()
	p.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}

	code, _ := get("/livez")
	require.Equal(t, http.StatusOK, code)
	code, body := get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, "not polling yet")
	require.Contains(t, body, "not polling")

	p.SetPolling(true)
	code, body = get("/readyz")
	require.Equal(t, http.StatusOK, code, body)

	set(nil, errors.New("connection refused"))
	code, body = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "registry: connection refused")

	set(errors.New("frontend unavailable"), nil)
	code, body = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "temporal: frontend unavailable")

	set(nil, nil)
	p.SetPolling(false) // stopping: out of rotation while activities finish
	code, _ = get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	code, _ = get("/livez")
	require.Equal(t, http.StatusOK, code, "a stopping worker is still alive")
}
