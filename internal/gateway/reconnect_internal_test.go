package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// minimalSession numbers minimalStore's sessions.
var minimalSession atomic.Int64

// minimalStore knows one active device with secret "s" and answers twin/get with empty documents.
type minimalStore struct{}

func (minimalStore) DeviceAuth(_ context.Context, id string) (fleet.DeviceAuth, error) {
	return fleet.DeviceAuth{ID: id, Status: fleet.StatusActive, Secret1Hash: creds.Digest("s")}, nil
}
func (minimalStore) GetTwin(_ context.Context, id string) (twin.Twin, error) {
	return twin.Twin{DeviceID: id}, nil
}
func (minimalStore) ApplyReported(_ context.Context, p []fleet.ReportedPatch) ([]fleet.ReportedResult, error) {
	return make([]fleet.ReportedResult, len(p)), nil
}
func (minimalStore) RecordConnections(context.Context, []fleet.ConnEvent) error { return nil }
func (minimalStore) NextSessions(_ context.Context, n int) ([]int64, error) {
	out := make([]int64, n)
	for i := range out {
		out[i] = minimalSession.Add(1)
	}
	return out, nil
}
func (minimalStore) RecordJobStatuses(context.Context, []fleet.JobStatus) error { return nil }
func (minimalStore) ListenDeviceChanges(ctx context.Context, _ func(string)) error {
	<-ctx.Done()
	return nil
}
func (minimalStore) ActiveScheme(context.Context) (*scheme.Scheme, error) { return nil, nil }

// mochi cleans up a dropped connection after our OnDisconnect, on the old connection's goroutine and by
// client id. A device reconnecting inside that window must not lose its subscriptions to that clean-up.
func TestReconnectDuringOldConnectionCleanup(t *testing.T) {
	var delay sync.Once
	testAfterDisconnect = func() {
		delay.Do(func() { time.Sleep(300 * time.Millisecond) }) // only the kicked connection
	}
	t.Cleanup(func() { testAfterDisconnect = nil })

	g := New(Config{Listen: "127.0.0.1:0"}, minimalStore{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, g.Start(context.Background()))
	t.Cleanup(func() { g.Close() })
	dial := func() (paho.Client, chan string) {
		got := make(chan string, 10)
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + g.Addr()).SetClientID("dev-a").
			SetUsername("dev-a").SetPassword("s").SetProtocolVersion(4).SetAutoReconnect(false).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m.Topic() }))
		tok := c.Connect()
		require.True(t, tok.WaitTimeout(5*time.Second))
		require.NoError(t, tok.Error())
		require.True(t, c.Subscribe("devices/dev-a/twin/res/#", 1, nil).WaitTimeout(5*time.Second))
		t.Cleanup(func() { c.Disconnect(0) })
		return c, got
	}
	dial()
	require.True(t, g.Kick("dev-a"))
	c, got := dial() // reconnects while the old connection's clean-up is still pending
	time.Sleep(400 * time.Millisecond)

	for i := range 3 {
		rid := fmt.Sprintf("r%d", i)
		require.True(t, c.Publish("devices/dev-a/twin/get/"+rid, 1, false, "").WaitTimeout(5*time.Second))
		select {
		case topic := <-got:
			require.Equal(t, "devices/dev-a/twin/res/200/"+rid, topic)
		case <-time.After(2 * time.Second):
			t.Fatalf("the reconnected device receives nothing (request %d)", i)
		}
	}
	require.Eventually(t, func() bool { return g.Stats().Connected == 1 }, time.Second, 5*time.Millisecond)
}
