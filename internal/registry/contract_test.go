package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// TestRegistryKeepsTheContract runs the store contract that the fake in internal/fleet/fleettest also
// passes, so that tests written against the fake hold for the registry.
func TestRegistryKeepsTheContract(t *testing.T) {
	fleettest.Contract(t, func(t *testing.T) fleettest.Subject {
		reg := open(t)
		return fleettest.Subject{Store: reg, Seed: seeder{reg}}
	})
}

// seeder sets the registry up as the CLI and the gateway do.
type seeder struct{ reg *registry.Registry }

func (s seeder) Stage(t *testing.T, op string, rows []fleettest.StagedRow) {
	staged := make([]registry.StagedRow, len(rows))
	for i, r := range rows {
		staged[i] = registry.StagedRow{Line: r.Line, ID: r.ID, Tags: r.Tags, ParseError: r.ParseError}
	}
	stage(t, s.reg, op, staged)
}

func (s seeder) CreateJob(t *testing.T, job string, kind fleet.JobKind, ids ...string) {
	_, err := s.reg.CreateJobForIDs(context.Background(), fleet.NewJob{ID: job, Kind: kind,
		Query: "ids: " + strings.Join(ids, " "), Spec: json.RawMessage(`{}`)}, ids)
	require.NoError(t, err)
}

func (s seeder) CreateRollout(t *testing.T, id string, fw fleet.Firmware, ids ...string) int64 {
	ctx := context.Background()
	_, err := s.reg.AddFirmware(ctx, fw)
	require.NoError(t, err)
	quoted := make([]string, len(ids))
	for i, d := range ids {
		quoted[i] = fmt.Sprintf("'%s'", d)
	}
	n, err := s.reg.CreateRollout(ctx, fleet.NewRollout{ID: id, Version: fw.Version,
		Query: "SELECT * FROM devices WHERE deviceId IN (" + strings.Join(quoted, ", ") + ")", Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)
	return n
}

func (s seeder) Connect(t *testing.T, id string) {
	require.NoError(t, s.reg.RecordConnections(context.Background(), []fleet.ConnEvent{{DeviceID: id, Kind: fleet.ConnUp, Session: 1, At: time.Now()}}))
}

func (s seeder) Report(t *testing.T, id string, patch string) {
	res, err := s.reg.ApplyReported(context.Background(), []fleet.ReportedPatch{{DeviceID: id, RequestID: "r1", Patch: []byte(patch)}})
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.NoError(t, res[0].Err)
}

func (s seeder) AddFirmware(t *testing.T, fw fleet.Firmware) {
	_, err := s.reg.AddFirmware(context.Background(), fw)
	require.NoError(t, err)
}

// Selects checks that Postgres's compiled query selects ids (the registry needs no teaching).
func (s seeder) Selects(t *testing.T, q string, ids ...string) {
	n, err := s.reg.CountTargets(context.Background(), q)
	require.NoError(t, err)
	require.Equal(t, int64(len(ids)), n, "%s selects %v", q, ids)
}

func (s seeder) AgeStaging(t *testing.T, op string, by time.Duration) {
	tag, err := s.reg.Pool().Exec(context.Background(), "UPDATE operations SET created_at = created_at - make_interval(secs => $2) WHERE id = $1",
		op, by.Seconds())
	require.NoError(t, err)
	require.Equal(t, int64(1), tag.RowsAffected())
}

func (s seeder) CredentialExpiry(t *testing.T, id string) time.Time {
	var at *time.Time
	require.NoError(t, s.reg.Pool().QueryRow(context.Background(), "SELECT credential_expires_at FROM devices WHERE id = $1", id).Scan(&at))
	if at == nil {
		return time.Time{}
	}
	return *at
}
