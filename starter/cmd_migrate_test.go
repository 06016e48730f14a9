package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// runMigrateCmd runs `fleetflow migrate args...` against url and returns what it printed.
func runMigrateCmd(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	cmd := newMigrateCmd(&globals{cfg: config.Config{DatabaseURL: url}})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestMigrateCommand(t *testing.T) {
	url := testenv.EmptyPostgres(t)
	want := registry.SchemaVersion()
	// Migration numbers may have gaps (numbers are reserved for branches), so count the migrations.
	st0, err := registry.Status(context.Background(), url)
	require.NoError(t, err)
	n := len(st0.Migrations)

	out, err := runMigrateCmd(t, url, "--status")
	require.NoError(t, err)
	require.Contains(t, out, "schema at version 0, this fleetflow needs")
	require.Contains(t, out, "run `fleetflow migrate`")
	require.Equal(t, n, strings.Count(out, "pending"), out)

	out, err = runMigrateCmd(t, url)
	require.NoError(t, err)
	require.Contains(t, out, "applied 001_init.sql")
	require.Equal(t, n, strings.Count(out, "applied "), out)

	out, err = runMigrateCmd(t, url, "-o", "json")
	require.NoError(t, err)
	var res struct {
		Applied []registry.Migration `json:"applied"`
		Version int64                `json:"version"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.NotNil(t, res.Applied, "an empty list, not null")
	require.Empty(t, res.Applied)
	require.Equal(t, want, res.Version)

	out, err = runMigrateCmd(t, url, "--status", "-o", "json")
	require.NoError(t, err)
	var st registry.SchemaStatus
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Equal(t, want, st.Current)
	require.Equal(t, want, st.Latest)
	require.True(t, st.Migrations[0].Applied)

	out, err = runMigrateCmd(t, url)
	require.NoError(t, err)
	require.Contains(t, out, "up to date")

	_, err = runMigrateCmd(t, url, "-o", "yml")
	require.ErrorContains(t, err, "want one of text|json|yaml")
	out, err = runMigrateCmd(t, url, "-o", "yaml")
	require.NoError(t, err)
	require.Contains(t, out, "version: ", "YAML has the JSON field names")
}
