package device

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// The rule: a connection is lost only when a ping is outstanding and a whole ping timeout went by with
// nothing read and nothing waiting in the socket.
func TestKeepAliveVerdict(t *testing.T) {
	for _, c := range []struct {
		outstanding, read, waiting bool
		want                       verdict
	}{
		{false, false, false, keepIdle},
		{false, true, true, keepIdle},
		{true, true, false, keepAgain}, // other packets came in: the gateway is there
		{true, false, true, keepAgain}, // bytes wait unread: this process was starved, not the link
		{true, false, false, keepDrop}, // silence: lost
		{true, true, true, keepAgain},
	} {
		if got := keepAliveVerdict(c.outstanding, c.read, c.waiting); got != c.want {
			t.Errorf("keepAliveVerdict(outstanding=%v, read=%v, waiting=%v) = %d, want %d", c.outstanding, c.read, c.waiting, got, c.want)
		}
	}
}

// The stream follower finds PINGRESPs however paho's reads cut the stream, and is not fooled by a PINGRESP's
// bytes inside another packet's remaining length or body.
func TestMQTTStreamFindsPingrespsInAnyPieces(t *testing.T) {
	var stream []byte
	// A PUBLISH whose body holds d0 00 (a PINGRESP's bytes), a remaining length of 208 (0xd0 0x01, whose
	// first byte is a PINGRESP's), a PINGRESP, a SUBACK, a PINGRESP.
	body := make([]byte, 208)
	body[10], body[11] = 0xd0, 0x00
	stream = append(stream, 0x30, 0x05, 'a', 'b', 0xd0, 0x00, 'c')
	stream = append(stream, 0x30, 0xd0, 0x01)
	stream = append(stream, body...)
	stream = append(stream, 0xd0, 0x00)
	stream = append(stream, 0x90, 0x03, 0x00, 0x01, 0x01)
	stream = append(stream, 0xd0, 0x00)
	for _, size := range []int{1, 2, 3, 7, 64, len(stream)} {
		var s mqttStream
		pongs := 0
		for p := stream; len(p) > 0; {
			k := min(size, len(p))
			pongs += s.feed(p[:k])
			p = p[k:]
		}
		if pongs != 2 || s.state != 0 {
			t.Errorf("reads of %d bytes: %d PINGRESPs (want 2), stream state %d (want 0, between packets)", size, pongs, s.state)
		}
	}
}

// A liveConn between a device and a gateway that answers a PINGREQ late: packets read after the PINGREQ keep
// the connection, silence drops it, and a PINGRESP ends the watch. check is called by hand in place of the
// timer, so nothing depends on timing.
func TestLiveConnKeepsAConnectionThatDeliversAndDropsASilentOne(t *testing.T) {
	device, gateway := net.Pipe()
	defer gateway.Close()
	lc := &liveConn{Conn: device, timeout: time.Hour}
	waiting := false
	lc.waiting = func() bool { return waiting }

	go func() { _, _ = io.ReadFull(gateway, make([]byte, 2)) }()
	if _, err := lc.Write([]byte{0xc0, 0x00}); err != nil {
		t.Fatal(err)
	}
	if lc.timer == nil || !lc.outstanding {
		t.Fatal("a PINGREQ written, but no ping timeout armed")
	}
	// A PUBLISH arrives, not the PINGRESP.
	go func() { _, _ = gateway.Write([]byte{0x30, 0x03, 0x00, 0x01, 'x'}) }()
	if _, err := io.ReadFull(lc, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if v := lc.check(); v != keepAgain {
		t.Fatalf("a packet read during the ping timeout: verdict %d, want keepAgain", v)
	}
	// Nothing read, but bytes wait in the socket: this process was the one starved.
	waiting = true
	if v := lc.check(); v != keepAgain {
		t.Fatalf("bytes waiting in the socket: verdict %d, want keepAgain", v)
	}
	// The PINGRESP: nothing is outstanding any more.
	waiting = false
	go func() { _, _ = gateway.Write([]byte{0xd0, 0x00}) }()
	if _, err := io.ReadFull(lc, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if v := lc.check(); v != keepIdle {
		t.Fatalf("PINGRESP read: verdict %d, want keepIdle", v)
	}

	// The next ping meets silence: the connection is dropped and paho's read fails with ErrKeepAlive.
	go func() { _, _ = io.ReadFull(gateway, make([]byte, 2)) }()
	if _, err := lc.Write([]byte{0xc0, 0x00}); err != nil {
		t.Fatal(err)
	}
	lc.timer.Stop()
	if v := lc.check(); v != keepDrop {
		t.Fatalf("silence for a ping timeout: verdict %d, want keepDrop", v)
	}
	lc.dead.Store(true)
	_ = lc.SetReadDeadline(time.Now())
	if _, err := lc.Read(make([]byte, 1)); !errors.Is(err, ErrKeepAlive) {
		t.Fatalf("read after the drop: %v, want ErrKeepAlive", err)
	}
}

// socketWaiting sees bytes that arrived on a TCP connection and were not read yet.
func TestSocketWaitingSeesUnreadBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if socketWaiting(client) {
		t.Fatal("nothing sent, yet bytes are waiting")
	}
	if _, err := server.Write([]byte{0xd0, 0x00}); err != nil {
		t.Fatal(err)
	}
	// Loopback delivery is not instantaneous: wait for the condition with a generous deadline.
	deadline := time.Now().Add(30 * time.Second)
	for !socketWaiting(client) {
		if time.Now().After(deadline) {
			t.Fatal("two bytes sent, none waiting after 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := io.ReadFull(client, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	if socketWaiting(client) {
		t.Fatal("every byte read, yet bytes are waiting")
	}
}

// The CONNECT paho writes (with no keep-alive: paho runs none) leaves with the device's keep-alive, whatever
// the length of its remaining-length field, and every other byte unchanged.
func TestConnectGetsTheDevicesKeepAlive(t *testing.T) {
	for _, password := range []string{"s", strings.Repeat("p", 300)} {
		cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
		cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
		cp.ClientIdentifier, cp.Username, cp.UsernameFlag = "dev-1", "dev-1", true
		cp.Password, cp.PasswordFlag = []byte(password), true
		var buf bytes.Buffer
		if err := cp.Write(&buf); err != nil {
			t.Fatal(err)
		}
		out, ok := withKeepAlive(buf.Bytes(), 90*time.Second)
		if !ok {
			t.Fatalf("password of %d bytes: not recognised as a CONNECT", len(password))
		}
		got, err := packets.ReadPacket(bytes.NewReader(out))
		if err != nil {
			t.Fatal(err)
		}
		c := got.(*packets.ConnectPacket)
		if c.Keepalive != 90 || c.ClientIdentifier != "dev-1" || string(c.Password) != password {
			t.Fatalf("password of %d bytes: keep-alive %d (want 90), client %q, password of %d bytes", len(password), c.Keepalive, c.ClientIdentifier, len(c.Password))
		}
		if diff := 0; len(out) == buf.Len() {
			for i := range out {
				if out[i] != buf.Bytes()[i] {
					diff++
				}
			}
			if diff != 1 { // 90 fits the keep-alive's low byte
				t.Fatalf("password of %d bytes: %d bytes changed, want 1", len(password), diff)
			}
		} else {
			t.Fatalf("length changed: %d, was %d", len(out), buf.Len())
		}
	}
	if _, ok := withKeepAlive([]byte{0x10, 0x02, 0x00}, time.Minute); ok {
		t.Fatal("a truncated CONNECT was patched")
	}
}

// Once the CONNECT is written the connection sends PINGREQs itself, unless it both wrote and read within the
// keep-alive; a PINGREQ outstanding past the backstop while other packets came drops the connection; pings
// stop with the connection.
func TestLiveConnSendsItsOwnPings(t *testing.T) {
	device, gateway := net.Pipe()
	defer gateway.Close()
	lc := newLiveConn(device, time.Hour, 20*time.Millisecond)
	lc.waiting = func() bool { return false }
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.ClientIdentifier = "MQTT", 4, "dev-1"
	go func() { _ = cp.Write(lc) }()
	_ = gateway.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := packets.ReadPacket(gateway)
	if err != nil {
		t.Fatal(err)
	}
	if ka := got.(*packets.ConnectPacket).Keepalive; ka != 1 {
		t.Fatalf("CONNECT keep-alive %d, want 1 (20 ms rounds up to a second)", ka)
	}
	ping := make([]byte, 2)
	if _, err := io.ReadFull(gateway, ping); err != nil || ping[0] != 0xc0 || ping[1] != 0 {
		t.Fatalf("after the CONNECT: % x, %v; want a PINGREQ", ping, err)
	}
	lc.mu.Lock()
	outstanding := lc.outstanding
	lc.mu.Unlock()
	if !outstanding {
		t.Fatal("a PINGREQ written, but none outstanding")
	}
	// Traffic both ways within the keep-alive: no PINGREQ is due (none is written: the pipe has no reader).
	quiet := newLiveConn(device, time.Hour, time.Hour)
	quiet.lastRead.Store(time.Now().UnixNano())
	quiet.lastWrite.Store(time.Now().UnixNano())
	quiet.pinger = time.AfterFunc(time.Hour, func() {})
	quiet.ping()
	quiet.mu.Lock()
	pinged := quiet.outstanding
	quiet.mu.Unlock()
	quiet.pinger.Stop()
	if pinged {
		t.Fatal("traffic both ways within the keep-alive, yet a PINGREQ was written")
	}

	lc.mu.Lock()
	lc.pingedAt = time.Now().Add(-pingBackstop(lc.timeout))
	lc.mu.Unlock()
	lc.ping()
	if !lc.dead.Load() {
		t.Fatal("a PINGREQ outstanding past the backstop, but the connection kept")
	}
	if err := lc.Close(); err != nil {
		t.Fatal(err)
	}
	lc.mu.Lock()
	closed := lc.closed
	lc.mu.Unlock()
	if !closed {
		t.Fatal("closed, but the pings go on")
	}
}
