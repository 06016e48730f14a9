package device

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The device's keep-alive rule (docs/architecture.md, "Keep-alive: a late PINGRESP is not a dead
// connection"). paho drops a connection whose PINGRESP is later than its ping timeout, even when other
// packets came in on it meanwhile and even when the PINGRESP is sitting unread in the socket because the
// device's own process was waiting for a core. During a reconnect storm either happens to healthy
// connections, and each drop is one more CONNECT for the gateways that are already behind. So the device
// takes the PINGRESP deadline away from paho (a backstop of pingBackstop remains) and applies its own rule
// on the connection it opened for paho: after a PINGREQ, the connection is lost only when a whole ping
// timeout went by with nothing read from it and nothing waiting in its socket; anything read, or anything
// waiting, starts another ping timeout, until the PINGRESP comes.

// The device also sends its own PINGREQs (docs/architecture.md, "The simulator over TLS: memory per
// device"): paho runs a keep-alive goroutine per connection that wakes every 5 s, and a simulator holds
// tens of thousands of connections, so that goroutine's stack (4 KiB once it has written through
// crypto/tls), its record and its ticker were 3–5 KiB of a simulated device's 64, and its wake-ups 20,000 a
// second at 100,000 devices. paho is given no keep-alive (so it starts no such goroutine), the CONNECT it
// writes gets the device's keep-alive on its way out (the server must know it to drop a silent device),
// and a timer on the connection writes a PINGREQ when a keep-alive went by without a packet written or
// without one read (paho's rule), which the rule below then watches.

// ErrKeepAlive is the error of a connection the keep-alive rule ended: a ping went unanswered and nothing
// else came from the gateway within the ping timeout. Its text keeps paho's words ("pingresp not
// received"), which counters of lost connections may match.
var ErrKeepAlive = errors.New("pingresp not received, nor anything else from the gateway, within the ping timeout")

// pingBackstop bounds a connection on which packets keep arriving but the PINGRESP never does: the
// device's rule decides first.
func pingBackstop(timeout time.Duration) time.Duration {
	return max(5*time.Minute, 10*timeout)
}

// MQTT control packet types (MQTT 3.1.1, 2.2.1) that the rule looks at.
const (
	typeConnect  = 1
	typePingreq  = 12
	typePingresp = 13
)

// pingreq is a PINGREQ packet.
var pingreq = []byte{typePingreq << 4, 0}

// verdict is what the keep-alive rule decides when a ping timeout has gone by.
type verdict int

const (
	keepIdle  verdict = iota // no ping outstanding: nothing to watch
	keepAgain                // a ping outstanding, but something arrived: watch another ping timeout
	keepDrop                 // a ping outstanding and nothing arrived: the connection is lost
)

// keepAliveVerdict is the rule itself: outstanding says whether a PINGREQ is unanswered, read whether
// anything was read from the connection during the last ping timeout, waiting whether bytes are waiting
// unread in its socket.
func keepAliveVerdict(outstanding, read, waiting bool) verdict {
	switch {
	case !outstanding:
		return keepIdle
	case read || waiting:
		return keepAgain
	default:
		return keepDrop
	}
}

// liveConn is the connection paho uses, watched by the keep-alive rule. paho writes each packet in one
// Write call, so a PINGREQ is a Write of exactly its two bytes; what paho reads is followed packet by packet
// (mqttStream) to see the PINGRESP whatever the size of its reads.
type liveConn struct {
	net.Conn
	timeout time.Duration
	// keepAlive is the interval of the device's own PINGREQs (0: none, as before the CONNECT is written).
	keepAlive time.Duration
	// waiting reports whether bytes are waiting unread in the socket (socketWaiting; replaced in tests).
	waiting func() bool

	read atomic.Uint64 // bytes returned to paho
	dead atomic.Bool   // the rule ended the connection
	// lastRead and lastWrite are when something was last read from or written to the connection (Unix
	// nanoseconds): a PINGREQ is due only after a keep-alive without either, as paho decides.
	lastRead, lastWrite atomic.Int64

	mu          sync.Mutex
	stream      mqttStream
	outstanding bool   // a PINGREQ written and its PINGRESP not read yet
	readAtCheck uint64 // read when the current ping timeout began
	timer       *time.Timer
	pingedAt    time.Time   // when the outstanding PINGREQ was written
	pinger      *time.Timer // the next PINGREQ, once the CONNECT is written
	closed      bool
}

// newLiveConn watches c with the ping timeout timeout and, if keepAlive > 0, writes the keep-alive into the
// CONNECT and, after it, a PINGREQ whenever one is due (ping).
func newLiveConn(c net.Conn, timeout, keepAlive time.Duration) *liveConn {
	lc := &liveConn{Conn: c, timeout: timeout, keepAlive: keepAlive}
	lc.waiting = func() bool { return socketWaiting(lc.Conn) }
	return lc
}

// Write notes a PINGREQ and starts its ping timeout, and gives a CONNECT the device's keep-alive.
func (c *liveConn) Write(p []byte) (int, error) {
	c.lastWrite.Store(time.Now().UnixNano())
	if len(p) == 2 && p[0]>>4 == typePingreq && p[1] == 0 {
		c.pinged()
	}
	if c.keepAlive > 0 && len(p) > 0 && p[0]>>4 == typeConnect {
		if q, ok := withKeepAlive(p, c.keepAlive); ok {
			n, err := c.Conn.Write(q)
			if err == nil {
				c.startPings()
			}
			return n, err
		}
	}
	return c.Conn.Write(p)
}

// withKeepAlive returns a copy of the CONNECT packet p (MQTT 3.1.1, 3.1) with its keep-alive field set to
// keepAlive in seconds (at least 1), or false if p is not a whole CONNECT.
func withKeepAlive(p []byte, keepAlive time.Duration) ([]byte, bool) {
	// Fixed header: the type byte and 1–4 bytes of remaining length; then the protocol name (a 2-byte
	// length and the name), the level and the flags, then the keep-alive (2 bytes, big-endian).
	i := 1
	for ; i < len(p) && i <= 4 && p[i]&0x80 != 0; i++ {
	}
	i++
	if i+2 > len(p) {
		return nil, false
	}
	nameLen := int(p[i])<<8 | int(p[i+1])
	at := i + 2 + nameLen + 2
	if at+2 > len(p) {
		return nil, false
	}
	secs := min(max(int(keepAlive/time.Second), 1), 0xffff)
	q := append([]byte(nil), p...)
	q[at], q[at+1] = byte(secs>>8), byte(secs)
	return q, true
}

// startPings arms the timer of the device's PINGREQs (a timer, not a goroutine: see above).
func (c *liveConn) startPings() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pinger == nil && !c.closed {
		c.pinger = time.AfterFunc(c.keepAlive, c.ping)
	}
}

// ping writes a PINGREQ when a keep-alive went by with nothing written or nothing read, and none is
// outstanding, as paho would (a connection answering nothing is the rule's to drop); otherwise it looks
// again when that keep-alive would end. A device busy both ways sends no PINGREQ: a fleet connected
// together would otherwise ping together, every keep-alive, whatever else it sends. A PINGREQ outstanding
// longer than pingBackstop, while other packets kept coming, drops the connection (the backstop paho's
// keep-alive held).
func (c *liveConn) ping() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	outstanding, since := c.outstanding, c.pingedAt
	c.mu.Unlock()
	next := c.keepAlive
	switch due := time.Unix(0, min(c.lastRead.Load(), c.lastWrite.Load())).Add(c.keepAlive); {
	case outstanding:
		if time.Since(since) >= pingBackstop(c.timeout) {
			c.drop()
			return
		}
	case time.Until(due) > 0:
		next = time.Until(due)
	default:
		// paho's writes set their own deadline, which may be long past; a PINGREQ gets one keep-alive.
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.keepAlive))
		if _, err := c.Write(pingreq); err != nil {
			return // the connection is failing: paho's reader or writer will say so
		}
	}
	c.mu.Lock()
	if !c.closed {
		c.pinger.Reset(next)
	}
	c.mu.Unlock()
}

// Close stops the device's PINGREQs with the connection.
func (c *liveConn) Close() error {
	c.mu.Lock()
	c.closed = true
	if c.pinger != nil {
		c.pinger.Stop()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// drop ends the connection for the keep-alive rule: paho's read fails with ErrKeepAlive.
func (c *liveConn) drop() {
	c.dead.Store(true)
	// Not Close: paho takes a read on a closed connection for its own disconnect and does not reconnect;
	// a read that fails is a lost connection (as dropConnection does).
	_ = c.Conn.SetReadDeadline(time.Now())
}

// Read follows the packets paho reads, and after the rule ended the connection says why.
func (c *liveConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
		c.read.Add(uint64(n))
		c.mu.Lock()
		if c.stream.feed(p[:n]) > 0 {
			c.outstanding = false
		}
		c.mu.Unlock()
	}
	if err != nil && c.dead.Load() {
		err = ErrKeepAlive
	}
	return n, err
}

// pinged marks a PINGREQ outstanding and arms the ping timeout unless one is running.
func (c *liveConn) pinged() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.outstanding {
		c.pingedAt = time.Now()
	}
	c.outstanding = true
	if c.timer != nil {
		return // a ping timeout is running; it watches this ping too
	}
	c.readAtCheck = c.read.Load()
	c.timer = time.AfterFunc(c.timeout, c.expire)
}

// expire runs when a ping timeout has gone by: it applies the rule and acts on its verdict.
func (c *liveConn) expire() {
	switch c.check() {
	case keepAgain:
		c.mu.Lock()
		c.timer.Reset(c.timeout)
		c.mu.Unlock()
	case keepDrop:
		c.drop()
	}
}

// check applies the rule to the ping timeout that has just gone by and starts the next one's count; the
// timer is released unless the verdict is keepAgain.
func (c *liveConn) check() verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.read.Load()
	read := now != c.readAtCheck
	c.readAtCheck = now
	// The socket is asked only when nothing was read: a system call per expiry of a starved connection.
	v := keepAliveVerdict(c.outstanding, read, !read && c.outstanding && c.waiting())
	if v != keepAgain {
		c.timer = nil
	}
	return v
}

// mqttStream follows the MQTT packets of a byte stream read in pieces of any size: fixed header byte,
// remaining length (1–4 bytes of 7 bits), then the body, which it skips.
type mqttStream struct {
	state     int // 0: at a packet's first byte; 1: in its remaining length; 2: in its body
	kind      byte
	remaining int
	shift     uint
}

// feed consumes p and returns how many PINGRESP packets were completed in it.
func (s *mqttStream) feed(p []byte) int {
	pongs := 0
	for len(p) > 0 {
		switch s.state {
		case 0:
			s.kind, s.remaining, s.shift, s.state = p[0]>>4, 0, 0, 1
			p = p[1:]
		case 1:
			b := p[0]
			p = p[1:]
			s.remaining |= int(b&0x7f) << s.shift
			s.shift += 7
			if b&0x80 != 0 && s.shift < 28 {
				continue
			}
			if s.remaining == 0 {
				if s.kind == typePingresp {
					pongs++
				}
				s.state = 0
				continue
			}
			s.state = 2
		case 2:
			k := min(len(p), s.remaining)
			s.remaining -= k
			p = p[k:]
			if s.remaining == 0 {
				if s.kind == typePingresp {
					pongs++ // a malformed PINGRESP with a body still answers the ping
				}
				s.state = 0
			}
		}
	}
	return pongs
}
