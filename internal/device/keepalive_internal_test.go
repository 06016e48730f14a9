package device

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
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
