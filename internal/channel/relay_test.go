package channel_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// The relay delivers what is published to an attached device, in order, and nothing once it is detached;
// attaching twice subscribes once.
func TestRelayAttachDeliversDetachStops(t *testing.T) {
	url := testenv.NATS(t)
	r, err := channel.DialRelay(channel.Config{URL: url, Logger: gatewaytest.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(r.Close)
	got := make(chan protocol.Downlink, 100)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx, func(d protocol.Downlink) { got <- d })

	require.NoError(t, r.Attach("a.b"))
	require.NoError(t, r.Attach("a.b"))
	assert.Equal(t, 1, r.Attached())
	c := dial(t, url)
	require.NoError(t, r.Kick("a.b", 7))
	for v := int64(1); v <= 3; v++ {
		_, err := c.PublishDesired(ctx, desired("a.b", v))
		require.NoError(t, err)
	}
	// The kick comes from another connection than the patches, so only the patches' order is defined.
	var desiredVersions, kicks []int64
	for range 4 {
		select {
		case d := <-got:
			assert.Equal(t, "a.b", d.Device)
			switch d.Kind {
			case protocol.SubjectDesired:
				desiredVersions = append(desiredVersions, d.Version)
			case protocol.SubjectKick:
				kicks = append(kicks, d.Session)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("delivered only %v and %v", desiredVersions, kicks)
		}
	}
	assert.Equal(t, []int64{1, 2, 3}, desiredVersions, "a device's patches in the order they were published")
	assert.Equal(t, []int64{7}, kicks)
	require.NoError(t, r.Detach("a.b"))
	require.NoError(t, r.Detach("a.b"))
	assert.Zero(t, r.Attached())
	// A patch for the detached device, then one for an attached device: the second arrives, the first
	// never does (one publisher, one subscriber connection: order is kept).
	require.NoError(t, r.Attach("z"))
	_, err = c.PublishDesired(ctx, append(desired("a.b", 4), desired("z", 1)...))
	require.NoError(t, err)
	select {
	case d := <-got:
		assert.Equal(t, "z", d.Device, "delivered after Detach: %+v", d)
	case <-time.After(10 * time.Second):
		t.Fatal("nothing delivered")
	}
}

func desired(id string, v int64) []fleet.DesiredPush {
	return []fleet.DesiredPush{{DeviceID: id, Version: v, Patch: []byte(`{"v":1}`)}}
}

// BenchmarkRelayAttach reports the gateway-side memory of attaching devices: what a gateway holding
// ~17,000 sessions spends on the bus (the NATS server's share is in its own process or node).
func BenchmarkRelayAttach(b *testing.B) {
	url := testenv.NATS(b)
	const n = 17000
	for b.Loop() {
		r, err := channel.DialRelay(channel.Config{URL: url, Logger: gatewaytest.Logger(b)})
		require.NoError(b, err)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		for i := range n {
			if err := r.Attach(fmt.Sprintf("dev.%06d", i)); err != nil {
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-bytes/device")
		b.ReportMetric(n/took.Seconds(), "attaches/s")
		r.Close()
	}
}
