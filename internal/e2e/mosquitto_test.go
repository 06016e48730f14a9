package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/pki"
)

// These tests drive a device with Debian's mosquitto clients (package mosquitto-clients, installed by
// `make deps` through deploy/ensure-mosquitto-clients.sh), so the device channel is checked against an MQTT
// implementation fleetflow did not write: libmosquitto, not paho. The device speaks MQTT 3.1.1 with its
// own credentials (client id = username = device id, password = its secret), as any device would, over TLS,
// verifying the gateway against the test's CA with --cafile (as a device of the local stack does with
// .fleetflow/tls/ca.pem): libmosquitto's OpenSSL checks the chain and that the certificate names the host.

// mosquittoTool returns the path of a mosquitto client. A missing client fails the test: the tests are part
// of `make test`, whose `make deps` installs them. A developer without them may set
// FLEETFLOW_SKIP_MOSQUITTO=1 to skip these tests instead.
func mosquittoTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("FLEETFLOW_SKIP_MOSQUITTO") == "1" {
		t.Skipf("%s is not installed and FLEETFLOW_SKIP_MOSQUITTO=1: skipping the mosquitto conformance test", name)
	}
	t.Fatalf("%s is not installed: run `make deps` (deploy/ensure-mosquitto-clients.sh installs Debian's mosquitto-clients), "+
		"or set FLEETFLOW_SKIP_MOSQUITTO=1 to skip this test on a development machine", name)
	return ""
}

// requireMosquitto checks for every client the tests use before anything is set up.
func requireMosquitto(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mosquitto_sub", "mosquitto_pub", "mosquitto_rr"} {
		mosquittoTool(t, tool)
	}
}

// mosquittoDevice holds the connection arguments of one device for the mosquitto clients.
type mosquittoDevice struct {
	id   string
	args []string // -h -p [--cafile] -V -i -u -P
}

// newMosquittoDevice is a device connecting to the gateway's TLS listener and verifying it with the
// environment's CA.
func newMosquittoDevice(t *testing.T, e *env, id, secret string) mosquittoDevice {
	t.Helper()
	return mosquittoDeviceAt(t, e.gw.TLSAddr(), e.tls.CA, id, secret)
}

// mosquittoDeviceAt is a device connecting to addr: over TLS verified against caFile, or over plaintext when
// caFile is empty.
func mosquittoDeviceAt(t *testing.T, addr, caFile, id, secret string) mosquittoDevice {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	args := []string{"-h", host, "-p", port}
	if caFile != "" {
		args = append(args, "--cafile", caFile)
	}
	return mosquittoDevice{id: id, args: append(args, "-V", "mqttv311", "-i", id, "-u", id, "-P", secret)}
}

// run runs a mosquitto client to completion and returns its stdout and stderr.
func (d mosquittoDevice) run(ctx context.Context, t *testing.T, tool string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, mosquittoTool(t, tool), append(append([]string(nil), d.args...), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		t.Logf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", tool, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), errb.String(), err
}

// mosquittoSub is a running mosquitto_sub whose output is read line by line.
type mosquittoSub struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string // stdout and stderr, in the order read
	done  chan struct{}
	err   error // the exit status, once done is closed
}

// sub starts mosquitto_sub with -d (which logs every packet, so the test can wait for the SUBACK and see a
// reconnect) and -v (messages as "topic payload"). stdbuf makes it write line by line into the pipe.
func (d mosquittoDevice) sub(t *testing.T, args ...string) *mosquittoSub {
	t.Helper()
	tool := mosquittoTool(t, "mosquitto_sub")
	stdbuf, err := exec.LookPath("stdbuf")
	require.NoError(t, err, "stdbuf (coreutils) makes mosquitto_sub's output line-buffered")
	all := append([]string{"-oL", "-eL", tool, "-d", "-v", "-q", "1"}, d.args...)
	cmd := exec.Command(stdbuf, append(all, args...)...)
	s := &mosquittoSub{cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var readers sync.WaitGroup
	for _, r := range []interface{ Read([]byte) (int, error) }{stdout, stderr} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				s.mu.Lock()
				s.lines = append(s.lines, sc.Text())
				s.mu.Unlock()
			}
		}()
	}
	go func() {
		readers.Wait() // Wait closes the pipes: read everything first
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			t.Logf("mosquitto_sub %s output:\n%s", strings.Join(args, " "), strings.Join(s.output(), "\n"))
		}
	})
	return s
}

func (s *mosquittoSub) output() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// count is the number of output lines containing substr.
func (s *mosquittoSub) count(substr string) int {
	n := 0
	for _, l := range s.output() {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// message waits for a message on a topic starting with prefix and returns its topic and payload.
func (s *mosquittoSub) message(t *testing.T, prefix string) (topic, payload string) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, l := range s.output() {
			if strings.HasPrefix(l, prefix) {
				topic, payload, _ = strings.Cut(l, " ")
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "mosquitto_sub received nothing on %s", prefix)
	return topic, payload
}

func (s *mosquittoSub) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func TestMosquittoClientsDriveADevice(t *testing.T) {
	requireMosquitto(t)
	e := newEnv(t)
	e.startWorker()
	secrets := provisionDirect(t, e, "mq-", 1)
	id := "mq-0001"
	require.Contains(t, secrets, id)
	d := newMosquittoDevice(t, e, id, secrets[id])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Twin get: mosquitto_rr subscribes to the response topic, publishes the request and prints the answer.
	// Over TLS, and once over the loopback plaintext listener, which serves devices too.
	plain := mosquittoDeviceAt(t, e.gw.Addr(), "", id, secrets[id])
	for _, rr := range []struct {
		name string
		d    mosquittoDevice
	}{{"tls", d}, {"plaintext", plain}} {
		rid := "rid-" + rr.name
		out, _, err := rr.d.run(ctx, t, "mosquitto_rr", "-q", "1", "-v", "-W", "20",
			"-t", "devices/"+id+"/twin/get/"+rid, "-e", "devices/"+id+"/twin/res/200/"+rid, "-m", "{}")
		require.NoError(t, err, rr.name)
		topic, payload, _ := strings.Cut(strings.TrimSpace(out), " ")
		require.Equal(t, "devices/"+id+"/twin/res/200/"+rid, topic, rr.name)
		var props map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(payload), &props), "%s twin/get answer: %s", rr.name, payload)
		assert.Contains(t, props, "desired", rr.name)
		assert.Contains(t, props, "reported", rr.name)
	}

	// The device listens for desired patches and method requests; -C 2 ends it after the patch and the
	// request, with its own DISCONNECT, so that mosquitto_pub can answer as the same device.
	sub := d.sub(t, "-C", "2", "-t", "devices/"+id+"/twin/desired/#", "-t", "devices/"+id+"/methods/req/#")
	require.Eventually(t, func() bool { return sub.count("received SUBACK") == 1 }, 20*time.Second, 20*time.Millisecond,
		"mosquitto_sub did not subscribe")
	// `twin set-desired` pushes only to a device the registry records as connected.
	require.Eventually(t, func() bool {
		tw, err := e.reg.GetTwin(ctx, id)
		return err == nil && tw.ConnectionState == "connected"
	}, 20*time.Second, 20*time.Millisecond)

	out, err := e.cli(ctx, "twin", "set-desired", id, "--patch", `{"telemetryInterval": 30}`)
	require.NoError(t, err)
	assert.Contains(t, out, "pushed to the device")
	topic, payload := sub.message(t, "devices/"+id+"/twin/desired/")
	v, err := strconv.ParseInt(strings.TrimPrefix(topic, "devices/"+id+"/twin/desired/"), 10, 64)
	require.NoError(t, err, "desired topic %s", topic)
	assert.Positive(t, v)
	assert.JSONEq(t, `{"telemetryInterval": 30}`, payload)

	invoked := e.cliAsync(ctx, "method", "invoke", id, "reboot", "--payload", `{"delay": 1}`, "--timeout", "30s", "-o", "json")
	topic, payload = sub.message(t, "devices/"+id+"/methods/req/reboot/")
	rid := strings.TrimPrefix(topic, "devices/"+id+"/methods/req/reboot/")
	require.NotEmpty(t, rid)
	assert.JSONEq(t, `{"delay": 1}`, payload)
	select {
	case <-sub.done:
		require.NoError(t, sub.err, "mosquitto_sub -C 2 exits cleanly after two messages")
	case <-time.After(20 * time.Second):
		t.Fatal("mosquitto_sub did not exit after two messages")
	}
	_, _, err = d.run(ctx, t, "mosquitto_pub", "-q", "1", "-t", "devices/"+id+"/methods/res/200/"+rid, "-m", `{"rebooted": true}`)
	require.NoError(t, err)
	select {
	case res := <-invoked:
		require.NoError(t, res.err)
		assert.JSONEq(t, `{"rebooted": true}`, res.out)
	case <-ctx.Done():
		t.Fatal("fleetflow method invoke did not return")
	}
}

// TestMosquittoSubSurvivesTakeover: when a device's second connection takes over its first, the first is
// closed without a DISCONNECT (MQTT 3.1.1 has none from the server). libmosquitto treats a server DISCONNECT
// on 3.1.1 as a protocol error and mosquitto_sub exits with "A network protocol error occurred"; a plain
// close is a lost connection, after which it reconnects and subscribes again.
func TestMosquittoSubSurvivesTakeover(t *testing.T) {
	requireMosquitto(t)
	e := newEnv(t)
	e.startWorker()
	secrets := provisionDirect(t, e, "mqt-", 1)
	id := "mqt-0001"
	require.Contains(t, secrets, id)
	d := newMosquittoDevice(t, e, id, secrets[id])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := d.sub(t, "-t", "devices/"+id+"/twin/desired/#")
	require.Eventually(t, func() bool { return first.count("received SUBACK") == 1 }, 20*time.Second, 20*time.Millisecond,
		"mosquitto_sub did not subscribe")
	connects := e.gw.Stats().Connects

	// A second connection as the same device takes the session over.
	_, _, err := d.run(ctx, t, "mosquitto_pub", "-q", "1", "-t", "devices/"+id+"/telemetry", "-m", `{"t": 1}`)
	require.NoError(t, err)
	require.GreaterOrEqual(t, e.gw.Stats().Connects, connects+1, "mosquitto_pub connected as the device")

	// The first connection was closed; mosquitto_sub reconnects (after its 1 s delay) and subscribes again.
	require.Eventually(t, func() bool { return first.count("received SUBACK") >= 2 || first.exited() }, 30*time.Second,
		20*time.Millisecond)
	require.False(t, first.exited(), "mosquitto_sub exited after the takeover: %v", first.err)
	for _, l := range first.output() {
		assert.NotContains(t, strings.ToLower(l), "protocol error")
		assert.NotContains(t, l, "Error")
	}
	assert.GreaterOrEqual(t, first.count("received CONNACK"), 2)
	require.Eventually(t, func() bool { return e.gw.Stats().Connected == 1 }, 10*time.Second, 20*time.Millisecond,
		"mosquitto_sub's new session is the device's only one")
}

// TestMosquittoClientWithAnotherCAIsRefused: a device that verifies the gateway against a CA that did not
// sign the gateway's certificate gives up in the TLS handshake, so it gets no CONNACK and no session; the
// same device with the right CA connects.
func TestMosquittoClientWithAnotherCAIsRefused(t *testing.T) {
	requireMosquitto(t)
	e := newEnv(t)
	e.startWorker()
	secrets := provisionDirect(t, e, "mqca-", 1)
	id := "mqca-0001"
	require.Contains(t, secrets, id)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	other, _, err := pki.NewCA("another CA", time.Now(), time.Hour)
	require.NoError(t, err)
	otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
	require.NoError(t, os.WriteFile(otherFile, other.PEM, 0o644))
	before := e.gw.Stats()

	// -d logs every packet; -C 1 -W 20 bound the run should the connection (wrongly) succeed.
	wrong := mosquittoDeviceAt(t, e.gw.TLSAddr(), otherFile, id, secrets[id])
	out, stderr, err := wrong.run(ctx, t, "mosquitto_sub", "-d", "-C", "1", "-W", "20", "-t", "devices/"+id+"/#")
	require.Error(t, err, "mosquitto_sub connected with a CA that did not sign the gateway's certificate")
	assert.Positive(t, exitCodeOf(err), "mosquitto_sub exits with an error status (not killed): %v", err)
	// libmosquitto queues its CONNECT ("sending CONNECT" in the log) before the handshake; OpenSSL refuses the
	// chain before it is written.
	assert.Contains(t, out+stderr, "certificate verify failed")
	assert.NotContains(t, out+stderr, "CONNACK")
	after := e.gw.Stats()
	assert.Equal(t, before.Connects, after.Connects, "no device session was established")

	// The control: the same device, with the CA that signed the gateway's certificate, gets its CONNACK.
	right := mosquittoDeviceAt(t, e.gw.TLSAddr(), e.tls.CA, id, secrets[id])
	out, stderr, err = right.run(ctx, t, "mosquitto_pub", "-d", "-q", "1", "-t", "devices/"+id+"/telemetry", "-m", `{"t": 1}`)
	require.NoError(t, err)
	assert.Contains(t, out+stderr, "received CONNACK (0)")
	assert.Greater(t, e.gw.Stats().Connects, after.Connects)
}
