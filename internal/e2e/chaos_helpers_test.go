//go:build chaos || soak

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/stack"
)

// Helpers of the slow chaos tests and the soak (chaos_slow_test.go, soak_test.go).

// plainWorker runs the worker binary without a fault hook, until the test ends or stop.
func (e *env) plainWorker() *proc {
	e.t.Helper()
	return e.startProc("worker", bins.worker, nil)
}

// jobStates counts a job's targets by state.
func (e *env) jobStates(ctx context.Context, job string) map[string]int64 {
	e.t.Helper()
	rows, err := e.reg.Pool().Query(ctx, "SELECT state, count(*) FROM job_devices WHERE job_id = $1 GROUP BY state", job)
	require.NoError(e.t, err)
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var s string
		var n int64
		require.NoError(e.t, rows.Scan(&s, &n))
		out[s] = n
	}
	require.NoError(e.t, rows.Err())
	return out
}

// gatewayProc runs `fleetflow gateway` on listen (plaintext, no metrics) against the test's registry and NATS.
func (e *env) gatewayProc(listen string) *proc {
	e.t.Helper()
	p := e.startProc("gateway "+listen, bins.cli, []string{"gateway", "--listen", listen, "--tls-listen", "",
		"--tls-cert", "", "--tls-key", "", "--metrics-listen", ""})
	require.Eventually(e.t, func() bool { return strings.Contains(p.out.String(), "gateway listening on") }, time.Minute,
		20*time.Millisecond, "gateway on %s did not start:\n%s", listen, p.out)
	return p
}

func freeListen(t *testing.T) string {
	t.Helper()
	port, err := stack.FreePort()
	require.NoError(t, err)
	return fmt.Sprintf("127.0.0.1:%d", port)
}
