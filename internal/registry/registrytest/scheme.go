package registrytest

import (
	"context"
	"testing"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// SetScheme records tags (and reported, may be nil) as a new scheme version and runs its check over the
// fleet the way the SchemeCheck workflow does (stage, batches, finish), without Temporal; batch is the
// batch size. It returns how the check ended: the version is active when the fleet satisfies it or allow
// is set, refused otherwise.
func SetScheme(t testing.TB, reg *registry.Registry, check string, tags, reported []byte, allow bool, batch int) fleet.SchemeCheckEnd {
	t.Helper()
	ctx := context.Background()
	v, err := reg.StageScheme(ctx, check, tags, reported, allow)
	if err != nil {
		t.Fatalf("stage scheme: %v", err)
	}
	if err := reg.StartSchemeCheck(ctx, check, v); err != nil {
		t.Fatalf("start scheme check: %v", err)
	}
	var p fleet.SchemeCheckProgress
	for !p.Done {
		if p, err = reg.SchemeCheckBatch(ctx, check, p.Cursor, batch); err != nil {
			t.Fatalf("scheme check batch: %v", err)
		}
	}
	end, err := reg.FinishSchemeCheck(ctx, check, true)
	if err != nil {
		t.Fatalf("finish scheme check: %v", err)
	}
	return end
}
