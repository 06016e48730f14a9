package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// A worker set to run more activities than its registry pool refuses to start, before it connects to
// anything (the database URL here leads nowhere).
func TestRunRefusesActivitiesAboveThePool(t *testing.T) {
	cfg := config.Config{DatabaseURL: "postgres://nobody@127.0.0.1:1/none", TemporalAddress: "127.0.0.1:1", TaskQueue: "q"}
	err := run(context.Background(), cfg, workerOptions{pool: 8, maxActivities: 9}, "", slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, fleetworker.ErrSlots)
	require.ErrorContains(t, err, "max activities 9 exceeds the registry pool of 8 connections")

	err = run(context.Background(), cfg, workerOptions{pool: -1}, "", slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "registry pool -1")

	// Worker versioning needs both names; half of it is refused before connecting too.
	err = run(context.Background(), cfg, workerOptions{deployment: "fleetflow"}, "", slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "both --deployment-name and --build-id")
}

// The worker wired as in production: /readyz turns 200 once it polls with the registry and Temporal up, and
// a signal (the context's end) stops it cleanly.
func TestRunIsReadyAndStopsOnSignal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	cfg := config.Config{DatabaseURL: testenv.Postgres(t), TemporalAddress: testenv.Temporal(t), Namespace: "default",
		TaskQueue: "worker-test", NATSURL: "nats://127.0.0.1:1"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, workerOptions{pool: 4, stopTimeout: time.Minute}, addr, slog.New(slog.DiscardHandler))
	}()
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		code, body, err := get("/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the worker ended before it was ready: %v", err)
		default:
		}
		require.True(t, time.Now().Before(deadline), "never ready: %d %q %v", code, body, err)
		time.Sleep(50 * time.Millisecond)
	}
	code, _, err := get("/livez")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	code, body, err := get("/metrics")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "fleetflow_registry_pool_max_connections 4", "the pool is the one the slots were sized from")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the worker did not stop")
	}
}
