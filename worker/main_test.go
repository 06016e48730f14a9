package main

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
)

// A worker set to run more activities than its registry pool refuses to start, before it connects to
// anything (the database URL here leads nowhere).
func TestRunRefusesActivitiesAboveThePool(t *testing.T) {
	cfg := config.Config{DatabaseURL: "postgres://nobody@127.0.0.1:1/none", TemporalAddress: "127.0.0.1:1", TaskQueue: "q"}
	err := run(context.Background(), cfg, workerOptions{pool: 8, maxActivities: 9}, "", slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, fleetworker.ErrSlots)
	require.ErrorContains(t, err, "max activities 9 exceeds the registry pool of 8 connections")

	err = run(context.Background(), cfg, workerOptions{pool: -1}, "", slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "registry pool -1")
}
