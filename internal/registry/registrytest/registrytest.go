// Package registrytest helps tests that need devices in a real registry (a throwaway Postgres of
// internal/testenv) before a gateway, a device or a simulator can connect: it provisions them the way the
// ProvisionFleet workflow does (stage, then one batch), without Temporal.
package registrytest

import (
	"context"
	"fmt"
	"testing"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// Open opens the registry on a fresh database of internal/testenv (already at the registry's schema) and
// closes it when the test ends.
func Open(t testing.TB) *registry.Registry {
	t.Helper()
	reg, err := registry.Open(context.Background(), testenv.Postgres(t))
	if err != nil {
		t.Fatalf("open the registry: %v", err)
	}
	t.Cleanup(reg.Close)
	return reg
}

// Provision creates n active devices named prefix-00, prefix-01, … with fresh secrets and returns their
// credentials, in order. It fails the test when the registry does not create exactly n.
func Provision(t testing.TB, reg *registry.Registry, prefix string, n int) []creds.Credential {
	t.Helper()
	ctx := context.Background()
	list := make([]creds.Credential, 0, n)
	rows := make([]registry.StagedRow, 0, n)
	for i := range n {
		secret, err := creds.NewSecret()
		if err != nil {
			t.Fatalf("provision %s: %v", prefix, err)
		}
		c := creds.Credential{ID: fmt.Sprintf("%s-%02d", prefix, i), Secret: secret}
		list = append(list, c)
		rows = append(rows, registry.StagedRow{Seq: int64(i), Line: int64(i + 1), ID: c.ID, Tags: "{}", SecretHash: creds.Digest(secret)})
	}
	next := 0
	op := "op-" + prefix
	if _, err := reg.StageRows(ctx, op, "provision", func() (registry.StagedRow, bool, error) {
		if next == len(rows) {
			return registry.StagedRow{}, false, nil
		}
		next++
		return rows[next-1], true, nil
	}); err != nil {
		t.Fatalf("stage %s: %v", prefix, err)
	}
	counts, err := reg.ProvisionBatch(ctx, op, 0, int64(n), 0)
	if err != nil || counts.Created != int64(n) {
		t.Fatalf("provision %s: %+v, %v", prefix, counts, err)
	}
	return list
}
