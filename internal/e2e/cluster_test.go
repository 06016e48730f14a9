package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// cluster is the scale-out shape of docs/architecture.md («Scale-out: gateways over NATS») in one process:
// a 3-node NATS cluster, three gateways on one throwaway registry (gateway i relays through node i), and a
// channel as the workers and the CLI use it.
type cluster struct {
	t      *testing.T
	reg    *registry.Registry
	nats   *testenv.NATSCluster
	gws    []*gateway.Gateway
	relays []*channel.Relay
	ch     *channel.Channel
}

func quiet() *slog.Logger {
	if os.Getenv("FLEETFLOW_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ctx := context.Background()
	reg := registrytest.Open(t)
	c := &cluster{t: t, reg: reg, nats: testenv.StartNATSCluster(t, 3)}
	for i, node := range c.nats.Nodes {
		r, err := channel.DialRelay(channel.Config{URL: node.ClientURL(), Name: fmt.Sprintf("gateway-%d", i+1), Logger: quiet()})
		require.NoError(t, err)
		t.Cleanup(r.Close)
		g := gateway.New(gateway.Config{Listen: "127.0.0.1:0", FlushInterval: 50 * time.Millisecond, Downlinks: r}, reg, quiet())
		require.NoError(t, g.Start(ctx))
		t.Cleanup(func() { g.Close() })
		c.gws, c.relays = append(c.gws, g), append(c.relays, r)
	}
	// The channel knows the whole cluster; it is told about the last node first.
	ch, err := channel.Dial(ctx, channel.Config{URL: c.nats.Nodes[2].ClientURL() + "," + c.nats.URL(), Logger: quiet()})
	c.ch = ch
	require.NoError(t, err)
	t.Cleanup(c.ch.Close)
	return c
}

func (c *cluster) mqtt(i int) string { return "tcp://" + c.gws[i].Addr() }

// provision creates n active devices prefix00…, straight in the registry.
func (c *cluster) provision(prefix string, n int) []creds.Credential {
	c.t.Helper()
	ctx := context.Background()
	var list []creds.Credential
	var rows []registry.StagedRow
	for i := range n {
		secret, err := creds.NewSecret()
		require.NoError(c.t, err)
		cr := creds.Credential{ID: fmt.Sprintf("%s%02d", prefix, i), Secret: secret}
		list = append(list, cr)
		rows = append(rows, registry.StagedRow{Seq: int64(i), Line: int64(i + 1), ID: cr.ID, Tags: "{}", SecretHash: creds.Digest(secret)})
	}
	next := 0
	op := "op-" + prefix
	_, err := c.reg.StageRows(ctx, op, "provision", func() (registry.StagedRow, bool, error) {
		if next == len(rows) {
			return registry.StagedRow{}, false, nil
		}
		next++
		return rows[next-1], true, nil
	})
	require.NoError(c.t, err)
	counts, err := c.reg.ProvisionBatch(ctx, op, 0, int64(n), 0)
	require.NoError(c.t, err)
	require.Equal(c.t, int64(n), counts.Created)
	return list
}

// connect connects a device SDK client to gateway i; it answers "echo" with its id and the gateway it
// was connected to.
func (c *cluster) connect(i int, cr creds.Credential) *device.Device {
	c.t.Helper()
	d, err := device.New(device.Config{BrokerURL: c.mqtt(i), ID: cr.ID, Secret: cr.Secret, Logger: quiet(),
		MaxReconnectInterval: time.Second})
	require.NoError(c.t, err)
	d.OnMethod("echo", func(context.Context, []byte) (any, error) { return map[string]any{"id": cr.ID, "gateway": i}, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(c.t, d.Connect(ctx))
	c.t.Cleanup(d.Close)
	return d
}

// raw connects a bare MQTT 3.1.1 client without reconnects, which stays down once the gateway drops it.
func (c *cluster) raw(i int, cr creds.Credential) (paho.Client, *atomic.Bool) {
	c.t.Helper()
	var lost atomic.Bool
	opts := paho.NewClientOptions().AddBroker(c.mqtt(i)).SetClientID(cr.ID).SetUsername(cr.ID).SetPassword(cr.Secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { lost.Store(true) })
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	require.True(c.t, tok.WaitTimeout(10*time.Second))
	require.NoError(c.t, tok.Error())
	c.t.Cleanup(func() { cl.Disconnect(50) })
	return cl, &lost
}

// reachable waits until a method call to id succeeds: the subscription of the gateway holding it has
// reached every node of the cluster (interest travels between nodes asynchronously).
func (c *cluster) reachable(id string) fleet.MethodResult {
	c.t.Helper()
	var res fleet.MethodResult
	require.Eventually(c.t, func() bool {
		r, err := c.ch.Invoke(context.Background(), fleet.MethodCall{DeviceID: id, Method: "echo"}, 5*time.Second)
		res = r
		return err == nil && r.Outcome == fleet.MethodSucceeded
	}, 30*time.Second, 50*time.Millisecond, "%s never became reachable: %+v", id, res)
	return res
}

// online waits until the registry shows id online with a session above min and returns that session.
func (c *cluster) online(id string, min int64) int64 {
	c.t.Helper()
	var s int64
	require.Eventually(c.t, func() bool {
		d, err := c.reg.GetDevice(context.Background(), id)
		s = d.Session
		return err == nil && d.Online && d.Session > min
	}, 20*time.Second, 20*time.Millisecond, "%s online with a session above %d", id, min)
	return s
}

// push writes a desired patch to the registry and publishes it as a job would.
func (c *cluster) push(id, patch string) int64 {
	c.t.Helper()
	ctx := context.Background()
	tw, err := c.reg.UpdateTwin(ctx, id, twin.Desired, []byte(patch), "")
	require.NoError(c.t, err)
	v := tw.Properties.Desired.Version
	n, err := c.ch.PublishDesired(ctx, []fleet.DesiredPush{{DeviceID: id, Version: v, Patch: []byte(patch)}})
	require.NoError(c.t, err)
	require.Equal(c.t, 1, n)
	return v
}

func desiredField(t *testing.T, d *device.Device, field string) any {
	t.Helper()
	doc, _ := d.Desired()
	var m map[string]any
	if len(doc) > 0 {
		require.NoError(t, json.Unmarshal(doc, &m))
	}
	return m[field]
}

// A method and a desired patch reach devices on every gateway from a channel connected to another node,
// and a device no gateway holds is answered offline at once, wherever the caller is.
func TestClusterReachesDevicesOnEveryGateway(t *testing.T) {
	c := newCluster(t)
	list := c.provision("cl.reach-", 4) // ids with '.', which subjects must carry
	devs := make([]*device.Device, 3)
	for i := range devs {
		devs[i] = c.connect(i, list[i])
	}
	for i := range devs {
		res := c.reachable(list[i].ID)
		assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"gateway":%d}`, list[i].ID, i), string(res.Payload), "answered by the device on gateway %d", i)
	}

	for i, d := range devs {
		v := c.push(list[i].ID, fmt.Sprintf(`{"interval":%d}`, 10+i))
		require.Eventually(t, func() bool { _, got := d.Desired(); return got == v }, 20*time.Second, 10*time.Millisecond,
			"desired v%d reached the device on gateway %d", v, i)
		assert.EqualValues(t, 10+i, desiredField(t, d, "interval"))
	}
	var relayed int64
	for _, g := range c.gws {
		relayed += g.Stats().DesiredRelayed
	}
	assert.Equal(t, int64(3), relayed, "each patch was relayed once, by the gateway holding the device")

	offline := list[3].ID
	start := time.Now()
	res := c.ch.InvokeMany(context.Background(), []fleet.MethodCall{
		{DeviceID: offline, Method: "echo"}, {DeviceID: list[0].ID, Method: "echo"}, {DeviceID: "cl.nobody", Method: "echo"},
	}, 20*time.Second, 0)
	assert.Less(t, time.Since(start), 10*time.Second, "the offline answers did not wait for the timeout")
	assert.Equal(t, fleet.MethodOffline, res[0].Outcome, "%+v", res[0])
	assert.Equal(t, 404, res[0].Status)
	assert.Equal(t, fleet.MethodSucceeded, res[1].Outcome)
	assert.Equal(t, fleet.MethodOffline, res[2].Outcome)
	assert.Less(t, res[0].Latency, 5*time.Second)
}

// A device connecting to another gateway ends its session on the first (which closes the MQTT 3.1.1
// connection), the registry shows the new session, and calls reach the device where it is now.
func TestClusterTakeoverAcrossGateways(t *testing.T) {
	c := newCluster(t)
	cr := c.provision("cl.move-", 1)[0]
	_, lost := c.raw(0, cr)
	s1 := c.online(cr.ID, 0)
	require.Eventually(t, func() bool { return c.relays[0].Attached() == 1 }, 5*time.Second, 5*time.Millisecond)

	d := c.connect(1, cr)
	require.Eventually(t, lost.Load, 20*time.Second, 10*time.Millisecond, "the session on gateway 1 was ended")
	s2 := c.online(cr.ID, s1)
	assert.Greater(t, s2, s1)
	require.Eventually(t, func() bool { return c.gws[0].Stats().Connected == 0 && c.relays[0].Attached() == 0 },
		10*time.Second, 10*time.Millisecond)
	assert.Equal(t, int64(1), c.gws[0].Stats().Takeovers)
	assert.Zero(t, c.gws[1].Stats().Takeovers, "the newer session was not touched")
	assert.True(t, d.IsConnected())

	res := c.reachable(cr.ID)
	assert.JSONEq(t, fmt.Sprintf(`{"id":%q,"gateway":1}`, cr.ID), string(res.Payload))
	// The older session's end was recorded after the newer began, and changed nothing.
	time.Sleep(300 * time.Millisecond)
	dev, err := c.reg.GetDevice(context.Background(), cr.ID)
	require.NoError(t, err)
	assert.True(t, dev.Online)
	assert.Equal(t, s2, dev.Session)
}

// Disabling or retiring a device drops its session on whichever gateway holds it, through the registry's
// notifications, which every gateway follows.
func TestClusterRevocationOnAnyGateway(t *testing.T) {
	c := newCluster(t)
	list := c.provision("cl.revoke-", 3)
	type conn struct {
		lost *atomic.Bool
		at   int
	}
	conns := make([]conn, len(list))
	for i, cr := range list {
		_, lost := c.raw(i, cr)
		conns[i] = conn{lost, i}
		c.online(cr.ID, 0)
	}
	ctx := context.Background()
	for i, cr := range list {
		status := fleet.StatusDisabled
		if i == 1 {
			status = fleet.StatusRetired
		}
		start := time.Now()
		require.NoError(t, c.reg.SetStatus(ctx, cr.ID, status))
		// The contract is "within a second"; the deadline is generous so that a loaded machine cannot
		// fail the test, and the time taken is logged.
		require.Eventually(t, conns[i].lost.Load, 20*time.Second, 5*time.Millisecond, "%s (%s) on gateway %d was not dropped", cr.ID, status, i)
		t.Logf("%s %s: session on gateway %d dropped after %s", cr.ID, status, conns[i].at+1, time.Since(start).Round(time.Millisecond))
		assert.Equal(t, int64(1), c.gws[i].Stats().Kicks)
	}
	for _, cr := range list {
		res, err := c.ch.Invoke(ctx, fleet.MethodCall{DeviceID: cr.ID, Method: "echo"}, 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, fleet.MethodOffline, res.Outcome)
	}
}

// When a gateway goes away its devices reconnect to another one (as behind a load balancer) and converge
// to desired state changed while they were away, and to what is pushed after.
func TestClusterClosedGatewayDevicesConvergeElsewhere(t *testing.T) {
	c := newCluster(t)
	list := c.provision("cl.fail-", 5)
	for _, cr := range list {
		c.connect(0, cr)
	}
	require.NoError(t, c.gws[0].Close())
	for _, cr := range list {
		res, err := c.ch.Invoke(context.Background(), fleet.MethodCall{DeviceID: cr.ID, Method: "echo"}, 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, fleet.MethodOffline, res.Outcome, "a closed gateway's devices are offline for callers")
	}
	// Changed while they are away: nobody holds them, so only the registry has it.
	for _, cr := range list {
		c.push(cr.ID, `{"mode":"eco"}`)
	}
	moved := make([]*device.Device, len(list))
	for i, cr := range list {
		moved[i] = c.connect(1+i%2, cr)
	}
	for i, d := range moved {
		assert.Equal(t, "eco", desiredField(t, d, "mode"), "%s got the change on reconnect", list[i].ID)
		c.reachable(list[i].ID)
	}
	for i, cr := range list {
		v := c.push(cr.ID, `{"mode":"boost"}`)
		d := moved[i]
		require.Eventually(t, func() bool { _, got := d.Desired(); return got == v }, 20*time.Second, 10*time.Millisecond)
		assert.Equal(t, "boost", desiredField(t, d, "mode"))
	}
}

// A NATS node stopped in the middle of a fan-out: every call still ends with an outcome by its timeout
// (answered, offline while a gateway fails over, or timed out), and once the clients have reconnected to
// the remaining nodes every device is reachable again.
func TestClusterNATSNodeStoppedDuringFanOut(t *testing.T) {
	c := newCluster(t)
	list := c.provision("cl.fan-", 12)
	for i, cr := range list {
		c.connect(i%3, cr)
	}
	for _, cr := range list {
		c.reachable(cr.ID)
	}
	var calls []fleet.MethodCall
	for range 250 {
		for _, cr := range list {
			calls = append(calls, fleet.MethodCall{DeviceID: cr.ID, Method: "echo"})
		}
	}
	const timeout = 5 * time.Second
	var results []fleet.MethodResult
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() {
		defer wg.Done()
		results = c.ch.InvokeMany(context.Background(), calls, timeout, 2000) // ~1.5 s of sending
	}()
	time.Sleep(300 * time.Millisecond)
	c.nats.Nodes[1].Close() // gateway 2's node
	wg.Wait()
	elapsed := time.Since(start)
	counts := map[fleet.MethodOutcome]int{}
	for i, r := range results {
		require.NotEmpty(t, r.Outcome, "call %d has no outcome", i)
		counts[r.Outcome]++
	}
	t.Logf("%d calls with node 2 stopped after 300 ms: %v in %s", len(calls), counts, elapsed.Round(time.Millisecond))
	assert.Less(t, elapsed, 30*time.Second, "the fan-out ended within its sending time plus the timeout")
	assert.Greater(t, counts[fleet.MethodSucceeded], len(calls)/4, "calls went on being answered")
	// Gateway 2's relay reconnects to another node and resubscribes: every device is reachable again.
	for _, cr := range list {
		c.reachable(cr.ID)
	}
	again := c.ch.InvokeMany(context.Background(), calls[:len(list)], timeout, 0)
	for i, r := range again {
		assert.Equal(t, fleet.MethodSucceeded, r.Outcome, "call %d after fail-over: %+v", i, r)
	}
}

// clusterEnv is newEnv's stack (registry, Temporal, the CLI and worker binaries) with the scale-out device
// channel: three gateways on a 3-node NATS cluster, which the workers and the CLI use.
func newClusterEnv(t *testing.T) (*env, *testenv.NATSCluster, []*gateway.Gateway) {
	t.Helper()
	e := newEnv(t)
	nc := testenv.StartNATSCluster(t, 3)
	e.natsURL = nc.URL()
	var gws []*gateway.Gateway
	for i, node := range nc.Nodes {
		r, err := channel.DialRelay(channel.Config{URL: node.ClientURL(), Name: fmt.Sprintf("gateway-%d", i+1), Logger: quiet()})
		require.NoError(t, err)
		t.Cleanup(r.Close)
		g := gateway.New(gateway.Config{Listen: "127.0.0.1:0", Downlinks: r}, e.reg, quiet())
		require.NoError(t, g.Start(context.Background()))
		t.Cleanup(func() { g.Close() })
		gws = append(gws, g)
	}
	return e, nc, gws
}

var jobCountsRe = regexp.MustCompile(`completed: (\d+) devices — succeeded (\d+), failed (\d+), timed out (\d+), offline (\d+)`)

// Jobs run by two worker processes reach devices spread over three gateways through the cluster, and a
// method job during which a NATS node is stopped still completes with an outcome for every device.
func TestClusterJobsWithTwoWorkers(t *testing.T) {
	e, nc, gws := newClusterEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.workerProcess()
	e.workerProcess()
	cs := e.fleet(ctx, 30, "cl")
	for i := range gws {
		var part []creds.Credential
		for j := i; j < len(cs); j += len(gws) {
			part = append(part, cs[j])
		}
		sim, err := simulator.New(simulator.Config{BrokerURL: "tcp://" + gws[i].Addr(), Creds: part, Logger: quiet()})
		require.NoError(t, err)
		simCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = sim.Run(simCtx) }()
		t.Cleanup(func() { stop(); <-done })
		require.Eventually(t, func() bool { return sim.Stats().Reported == int64(len(part)) }, time.Minute, 50*time.Millisecond)
	}
	q := "SELECT * FROM devices WHERE tags.region = 'cl'"

	out, err := e.cli(ctx, "job", "start", "--query", q, "--set-desired", `{"telemetryInterval": 45}`, "--timeout", "1m")
	require.NoError(t, err)
	require.Contains(t, out, "completed: 30 devices — succeeded 30, failed 0")
	for _, c := range cs {
		assert.Equal(t, "45", e.reportedField(ctx, c.ID, "telemetryInterval"), c.ID)
	}
	// Every gateway's subscriptions have reached every node by now (the desired job waited for the
	// devices' acknowledgements), so a method job finds every device.
	out, err = e.cli(ctx, "job", "start", "--query", q, "--method", "ping", "--timeout", "10s")
	require.NoError(t, err)
	require.Contains(t, out, "completed: 30 devices — succeeded 30, failed 0, timed out 0, offline 0")

	// A method job at 10 devices/s, and the node of the second gateway stopped a second into it.
	job := e.cliAsync(ctx, "job", "start", "--query", q, "--method", "ping", "--timeout", "10s", "--rate", "10")
	time.Sleep(time.Second)
	nc.Nodes[1].Close()
	var res cliResult
	select {
	case res = <-job:
	case <-ctx.Done():
		t.Fatal("the job did not finish")
	}
	require.NoError(t, res.err)
	m := jobCountsRe.FindStringSubmatch(res.out)
	require.NotNil(t, m, "job output: %s", res.out)
	total, _ := strconv.Atoi(m[1])
	sum := 0
	for _, n := range m[2:] {
		k, _ := strconv.Atoi(n)
		sum += k
	}
	assert.Equal(t, 30, total)
	assert.Equal(t, 30, sum, "every device has an outcome: %s", m[0])
	t.Logf("method job with a NATS node stopped: %s", m[0])
	succeeded, _ := strconv.Atoi(m[2])
	assert.GreaterOrEqual(t, succeeded, 10, "the devices of the other gateways kept answering")
}
