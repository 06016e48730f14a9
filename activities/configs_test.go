package activities

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// A reconcile pass writes and pushes the configuration to the devices it targets, and to devices provisioned
// while it watches as soon as the registry announces them: its poll is ten minutes, so only the wake-up can
// bring them in within the test's deadline.
func TestConfigReconcileWakesOnNewDevices(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := registrytest.Open(t)
	registrytest.Provision(t, reg, "ca", 2)
	spec := fleet.ConfigSpec{Name: "wake", Priority: 1, Section: twin.Desired, Target: fleet.Target{Query: "SELECT * FROM devices"},
		Patch: json.RawMessage(`{"interval": 30}`)}
	require.NoError(t, reg.SaveConfig(ctx, spec, 1, fleet.ConfigActive))
	feed := registry.NewChangeFeed(reg)
	listening := feed.Changed()
	go feed.Run(ctx)
	select {
	case <-listening: // LISTEN is in place
	case <-time.After(30 * time.Second):
		t.Fatal("the change feed did not start listening")
	}
	ch := &fakeChannel{}
	a := &Activities{Configs: reg, Changes: feed, Channel: ch}
	done := make(chan error, 1)
	go func() {
		_, err := a.ConfigReconcile(ctx, workflows.ConfigReconcileInput{Name: "wake", RunFor: 10 * time.Minute, PollEvery: 10 * time.Minute, BatchSize: 100})
		done <- err
	}()
	pushed := func() int {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return len(ch.published)
	}
	require.Eventually(t, func() bool { return pushed() == 2 }, time.Minute, 20*time.Millisecond, "the devices targeted at the start")
	registrytest.Provision(t, reg, "cb", 3)
	require.Eventually(t, func() bool { return pushed() == 5 }, time.Minute, 20*time.Millisecond, "the devices provisioned later")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	c, err := reg.ConfigCounts(context.Background(), "wake")
	require.NoError(t, err)
	assert.Equal(t, fleet.ConfigCounts{Targeted: 5, Applied: 5}, c)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for _, p := range ch.published {
		assert.JSONEq(t, `{"interval": 30}`, string(p.Patch), p.DeviceID)
		assert.EqualValues(t, 2, p.Version, p.DeviceID)
	}
}
