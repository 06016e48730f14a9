package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// withAppName adds application_name to a URL, so that pg_stat_activity tells its connections apart.
func withAppName(url, name string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "application_name=" + name
}

// The LISTEN connection goes to Options.ListenURL (a direct URL beside a pooled one), the pool to the main URL.
func TestListenURLCarriesTheListenConnection(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url := testenv.Postgres(t)
	reg, err := registry.OpenWithOptions(ctx, withAppName(url, "ff_pool"), registry.Options{ListenURL: withAppName(url, "ff_listen")})
	require.NoError(t, err)
	defer reg.Close()
	got := make(chan string, 10)
	go reg.ListenDeviceChanges(ctx, func(id string) { got <- id }) //nolint:errcheck
	select {
	case id := <-got:
		require.Equal(t, "", id, "the listener first says it is listening")
	case <-time.After(30 * time.Second):
		t.Fatal("the listener never started listening")
	}
	var listening, pooled int
	require.NoError(t, reg.Pool().QueryRow(ctx, `SELECT
		count(*) FILTER (WHERE application_name = 'ff_listen' AND query ILIKE 'LISTEN %'),
		count(*) FILTER (WHERE application_name = 'ff_pool')
		FROM pg_stat_activity WHERE datname = current_database()`).Scan(&listening, &pooled))
	require.Equal(t, 1, listening, "one session, from ListenURL, has run LISTEN")
	require.GreaterOrEqual(t, pooled, 1, "the pool's sessions use the main URL")

	_, err = registry.OpenWithOptions(ctx, url, registry.Options{ListenURL: "postgres://%zz"})
	require.ErrorContains(t, err, "listen url")
}
