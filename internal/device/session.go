package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Connect connects (once; reconnects are automatic afterwards) and returns when the first twin sync is done.
// A refused CONNECT returns an error wrapping ErrNotAuthorized (bad credentials) or ErrServerBusy (try
// later), and Connect may be called again. If the CONNECT succeeds but the first twin sync fails, the device
// stays connected, keeps retrying the sync in the background (see resync), and the error is returned; call
// Close to give up.
func (d *Device) Connect(ctx context.Context) error {
	err := d.connect(ctx)
	// A refused secret may be one a rotation replaced before the device could use it: the other slot's
	// secret is what the registry still knows (docs/architecture.md, "Credential rotation").
	if errors.Is(err, ErrNotAuthorized) && d.fallBack() {
		err = d.connect(ctx)
	}
	return err
}

// connect is one Connect attempt with the secret of the slot being tried.
func (d *Device) connect(ctx context.Context) error {
	d.mu.Lock()
	if d.client != nil || d.closed {
		d.mu.Unlock()
		return errors.New("device: Connect called twice or after Close")
	}
	n := d.newSession()
	opts := paho.NewClientOptions()
	brokers := d.cfg.brokers()
	opts.Servers = brokerURLs(brokers)
	opts.
		SetClientID(d.cfg.ID).
		SetUsername(d.cfg.ID).
		SetCredentialsProvider(d.password).
		SetCustomOpenConnectionFn(d.openConnection).
		// Explicit 3.1.1: otherwise paho retries every refused CONNECT as MQTT 3.1, doubling auth load.
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(false).
		// The wait between reconnect attempts is the device's (reconnectWait): paho's own backoff is the
		// same for every device (1 s, 2 s, 4 s…), which brings a crowd of refused devices back in waves.
		SetMaxReconnectInterval(time.Millisecond).
		// The keep-alive is the connection's (keepalive.go): its PINGREQs, the PingTimeout rule, and the
		// value in the CONNECT. paho's would be one more goroutine per connection.
		SetKeepAlive(0).
		SetConnectTimeout(d.cfg.ConnectTimeout).
		SetWriteTimeout(10*time.Second).
		// Handlers never block (they hand work to the device's queue), so paho may keep its ordered
		// delivery, which keeps desired patches in order.
		SetOrderMatters(true).
		SetBinaryWill(protocol.StateTopic(d.cfg.ID), statePayload(false, n), 1, true).
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(d.onConnect).
		SetConnectionLostHandler(d.onConnectionLost).
		SetConnectionAttemptHandler(func(broker *url.URL, tc *tls.Config) *tls.Config {
			b := broker.String()
			d.attempt.Store(&b)
			return tc
		}).
		SetConnectionNotificationHandler(func(_ paho.Client, n paho.ConnectionNotification) {
			f, ok := n.(paho.ConnectionNotificationFailed)
			if !ok {
				return
			}
			// Each failed attempt lengthens the bound of the next reconnect's wait, a refusal for being
			// busy as any other (a successful sync resets it: onConnect).
			d.failures.Add(1)
			if errors.Is(f.Reason, packets.ErrorRefusedNotAuthorised) || errors.Is(f.Reason, packets.ErrorRefusedBadUsernameOrPassword) {
				d.refusedAuth()
			}
			if errors.Is(f.Reason, packets.ErrorRefusedServerUnavailable) && d.cfg.OnBusy != nil {
				d.cfg.OnBusy()
			}
		}).
		SetReconnectingHandler(func(_ paho.Client, o *paho.ClientOptions) {
			// A random wait below a bound that doubles with each failed attempt (docs/architecture.md,
			// "Admission control: refusing what cannot be served"), so that a crowd of refused devices
			// thins out instead of coming back together.
			if wait := reconnectWait(d.failures.Load(), d.cfg.ReconnectJitter, d.cfg.MaxReconnectInterval); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-d.closing:
					t.Stop()
				}
			}
			// Each connection gets a new session number; the LWT must carry the one its birth will.
			o.WillPayload = statePayload(false, d.newSession())
			d.nextReconnect()
			// Another gateway first: the lost one may be going away (brokers.go). No CONNECT is attempted
			// while connected, so the last one attempted is the gateway of the lost connection. One
			// gateway per attempt: paho would otherwise go straight on to the next gateway after a
			// refusal, and a busy fleet's refused devices would knock on every gateway at once; between
			// attempts paho waits its own backoff, and this handler the jitter.
			if last := d.attempt.Load(); last != nil {
				o.Servers = rotateAfter(d.servers, *last)[:1]
			}
		})
	opts.SetStore(&copyingStore{MemoryStore: paho.NewMemoryStore()})
	if d.cfg.Dialer != nil {
		opts.SetDialer(d.cfg.Dialer)
	}
	if d.cfg.TLSConfig != nil && anyTLS(brokers) {
		opts.SetTLSConfig(d.cfg.TLSConfig)
	}
	d.servers = slices.Clone(opts.Servers)
	client := paho.NewClient(opts)
	d.client = client
	d.mu.Unlock()

	tok := client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		client.Disconnect(0)
		d.mu.Lock()
		d.client = nil
		d.mu.Unlock()
		return fmt.Errorf("connect %s: %w", d.cfg.ID, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		d.mu.Lock()
		d.client = nil // paho clients must not be reused after a failed connect; allow another Connect
		d.mu.Unlock()
		if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
			return fmt.Errorf("connect %s: %w", d.cfg.ID, ErrNotAuthorized)
		}
		if errors.Is(err, packets.ErrorRefusedServerUnavailable) {
			return fmt.Errorf("connect %s: %w", d.cfg.ID, ErrServerBusy)
		}
		return fmt.Errorf("connect %s: %w", d.cfg.ID, err)
	}
	select {
	case <-d.firstSync:
		return d.firstErr
	case <-ctx.Done():
		return fmt.Errorf("connect %s: twin sync: %w", d.cfg.ID, ctx.Err())
	}
}

// newSession picks the next session number: the time in ms, kept strictly increasing.
func (d *Device) newSession() int64 {
	for {
		last := d.session.Load()
		n := time.Now().UnixMilli()
		if n <= last {
			n = last + 1
		}
		if d.session.CompareAndSwap(last, n) {
			return n
		}
	}
}

// statePayload is the birth (online) or LWT (offline) of connection number session.
func statePayload(online bool, session int64) []byte {
	return protocol.State{Online: online, Session: session}.Payload()
}

// onConnect runs on its own goroutine after every (re)connect: subscribe (subscriptions do not survive a
// clean session), announce the birth, then fetch the twin, because desired patches sent while the device
// was offline are not kept for it.
func (d *Device) onConnect(c paho.Client) {
	d.broker.Store(d.attempt.Load())
	d.connected()
	n := d.session.Load()
	err := d.sync(c, n)
	if err != nil && d.session.Load() == n {
		d.log.Warn("twin sync after connect failed", "session", n, "err", err)
	}
	if err == nil {
		d.syncedAt.Store(time.Now().UnixNano())
		d.synced.Store(n)
	}
	d.firstOnce.Do(func() {
		if err != nil {
			d.firstErr = fmt.Errorf("connect %s: %w", d.cfg.ID, err)
		}
		close(d.firstSync)
	})
	if d.cfg.OnConnected != nil {
		d.cfg.OnConnected(n, err)
	}
	if err != nil {
		d.resync(c, n, err)
	}
}

// resync repeats a failed sync of connection n, after random waits that grow, until it succeeds or the
// connection is gone. A device whose SUBSCRIBE or twin/get timed out (a gateway catching up after another
// one died) would otherwise stay connected without its subscriptions or the desired state written while it
// was away, and a desired change pushed then would be lost to it until its next reconnect.
func (d *Device) resync(c paho.Client, n int64, err error) {
	for try := int64(1); ; try++ {
		var re *ResponseError
		if errors.As(err, &re) && re.Status == 404 {
			return // the registry does not know the device: nothing to sync
		}
		t := time.NewTimer(time.Second + jitter(busyBackoff(try, d.cfg.MaxReconnectInterval)))
		select {
		case <-t.C:
		case <-d.closing:
			t.Stop()
			return
		}
		if d.session.Load() != n || !c.IsConnectionOpen() {
			return // a reconnect syncs again
		}
		if err = d.sync(c, n); err == nil {
			d.log.Info("twin sync after connect succeeded on retry", "session", n, "tries", try+1)
			return
		}
		if d.session.Load() != n {
			return
		}
		d.log.Warn("twin sync after connect failed again", "session", n, "try", try+1, "err", err)
	}
}

func (d *Device) sync(c paho.Client, session int64) error {
	id := d.cfg.ID
	tok := c.SubscribeMultiple(map[string]byte{
		protocol.TwinResponseFilter(id):  1,
		protocol.DesiredFilter(id):       1,
		protocol.MethodRequestFilter(id): 0,
	}, nil)
	if err := waitToken(tok, d.cfg.RequestTimeout); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for filter, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("subscribe %s: refused by the gateway", filter)
			}
		}
	}
	if err := waitToken(c.Publish(protocol.StateTopic(id), 1, true, statePayload(true, session)), d.cfg.RequestTimeout); err != nil {
		return fmt.Errorf("publish birth: %w", err)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * time.Second)
		}
		// A reconnect picks a new session number; this sync then belongs to a dead connection.
		if d.session.Load() != session || !c.IsConnectionOpen() {
			return errors.New("connection replaced during twin sync")
		}
		if err = d.twinGet(); err == nil {
			return nil
		}
		var re *ResponseError
		if errors.As(err, &re) && re.Status == 404 {
			return err
		}
	}
	return err
}

func (d *Device) onConnectionLost(_ paho.Client, err error) {
	d.log.Debug("connection lost", "err", err)
	synced := d.synced.Load() == d.session.Load()
	lived := time.Since(time.Unix(0, d.syncedAt.Load()))
	d.failures.Store(failuresAfterLoss(d.failures.Load(), synced, lived))
	// Requests waiting for an answer fail now rather than at their deadline: the gateway answers on the
	// connection a request came in on, which is gone.
	d.mu.Lock()
	for _, ch := range d.waiters {
		select {
		case ch <- response{lost: true}:
		default:
		}
	}
	d.mu.Unlock()
	if d.cfg.OnConnectionLost != nil {
		d.cfg.OnConnectionLost(err)
	}
}

// onMessage runs on paho's router goroutine and must not block or publish: responses complete a waiting
// request; desired patches and method calls go to the device's queue.
func (d *Device) onMessage(_ paho.Client, m paho.Message) {
	t, err := protocol.Parse(m.Topic())
	if err != nil || t.Device != d.cfg.ID {
		// The device subscribes only to its own cloud-to-device topics, so this is a malformed one.
		d.log.Warn("ignoring message on a topic outside the contract", "topic", m.Topic(), "err", err)
		return
	}
	switch t.Kind {
	case protocol.KindTwinResponse:
		d.mu.Lock()
		ch := d.waiters[t.RequestID]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- response{status: t.Status, body: m.Payload()}:
			default:
			}
		}
	case protocol.KindDesired:
		v, patch := t.Version, append([]byte(nil), m.Payload()...)
		if !d.queue.push(func() { d.applyDesired(v, nil, patch) }) {
			d.log.Warn("desired queue full; the next twin/get will catch up", "version", v)
		}
	case protocol.KindMethodRequest:
		name, rid, payload := t.Method, t.RequestID, append([]byte(nil), m.Payload()...)
		if !d.queue.push(func() { d.callMethod(name, rid, payload) }) {
			d.log.Warn("method queue full; dropping call", "method", name)
		}
	}
}

// Close announces the device offline (a clean DISCONNECT does not fire the LWT) and disconnects.
func (d *Device) Close() {
	d.mu.Lock()
	c := d.client
	if !d.closed {
		close(d.closing)
	}
	d.closed = true
	d.mu.Unlock()
	if c == nil {
		return
	}
	if c.IsConnectionOpen() {
		_ = waitToken(c.Publish(protocol.StateTopic(d.cfg.ID), 1, true, statePayload(false, d.session.Load())), time.Second)
	}
	c.Disconnect(250)
}

// reconnectWait is the wait before a reconnect attempt after failed earlier ones ("full jitter": a
// random time below a bound, never a fixed floor). The first attempt after a lost connection waits below
// spread (the configured ReconnectJitter; 0: at once), so that the devices of a gateway that died do not
// all come back in the same second; after failed attempts the bound is spread plus a part that doubles
// from 1 s up to limit, so that a crowd refused again and again spreads wider.
func reconnectWait(failed int64, spread, limit time.Duration) time.Duration {
	if failed <= 0 {
		return jitter(spread)
	}
	return jitter(spread + busyBackoff(failed, limit))
}

// stableSession is how long a synced connection must have lasted for its loss to start the reconnect
// backoff afresh.
const stableSession = 10 * time.Second

// failuresAfterLoss is the device's count of failed attempts once a connection is lost: one more when it
// was lost before its sync succeeded or within stableSession of it, none when it had lasted. Lost early,
// the connection is as good as a failed attempt: otherwise a gateway that accepts and drops devices would
// have them back at once, again and again, and two devices sharing an id (a cloned credential), each
// taking the other's session over the moment it is synced, would do so as fast as they can connect,
// since the first attempt after a loss has no floor (reconnectWait).
func failuresAfterLoss(failures int64, synced bool, lived time.Duration) int64 {
	if synced && lived >= stableSession {
		return 0
	}
	return failures + 1
}

// busyBackoff is the bound of the random wait after n consecutive failures: 1 s, doubling, at most
// limit.
func busyBackoff(n int64, limit time.Duration) time.Duration {
	return min(limit, time.Second<<min(n-1, 10))
}

// jitter is a random wait below upTo (0 when upTo is 0).
func jitter(upTo time.Duration) time.Duration {
	if upTo <= 0 {
		return 0
	}
	return rand.N(upTo)
}

func waitToken(t paho.Token, timeout time.Duration) error {
	if !t.WaitTimeout(timeout) {
		return fmt.Errorf("timed out after %s", timeout)
	}
	return t.Error()
}

// copyingStore is paho's MemoryStore holding its own copy of each outgoing PUBLISH. paho v1.5.1 sets the
// DUP flag on stored packets when it resumes after a reconnect, while a publish made from the OnConnect
// handler can be writing the same packet at that moment: a data race. A copy keeps the two apart.
type copyingStore struct {
	*paho.MemoryStore
}

// Put stores a copy of a PUBLISH (the payload is shared; nobody writes it) and other packets as they are.
func (s *copyingStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		c := *p
		m = &c
	}
	s.MemoryStore.Put(key, m)
}
