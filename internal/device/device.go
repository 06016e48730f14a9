// Package device is the small client a real device would embed to speak fleetflow's device channel
// (DESIGN §4) over MQTT 3.1.1 with paho: twin get/reported/desired, direct methods, telemetry, job progress
// and a retained birth/LWT state message.
//
// It encodes the protocol rules a device must follow so that each one is written once: ask twin/get after
// every (re)connect because desired state is not retained by the broker; ignore desired patches that are
// not newer than what the device already has; carry a session number in birth and LWT so consumers can
// discard a late LWT of an older connection; never block paho's router (handlers that block stall acks and
// pings and get the connection dropped). It is also what the simulator runs 10,000 times in one process, so
// a device keeps no goroutines of its own beyond paho's and a short-lived worker while it has work.
package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/fleetflow/fleetflow/internal/twin"
)

// ErrNotAuthorized is returned by Connect when the gateway refuses the CONNECT: unknown device, wrong
// secret, or a device that is disabled or retired. Retrying with the same credentials will not help.
var ErrNotAuthorized = errors.New("not authorized")

// ErrNotConnected is returned for requests made while the device has no connection.
var ErrNotConnected = errors.New("not connected")

// ResponseError is a non-2xx answer from the gateway to a twin request.
type ResponseError struct {
	Status  int
	Message string
}

// Error includes the status, which tells the caller whether retrying can help (429, 503) or not (400, 404).
func (e *ResponseError) Error() string {
	return fmt.Sprintf("gateway answered %d: %s", e.Status, e.Message)
}

// Config describes one device.
type Config struct {
	BrokerURL string // e.g. tcp://127.0.0.1:1883
	ID        string
	Secret    string

	KeepAlive            time.Duration // MQTT keepalive (default 60 s)
	ConnectTimeout       time.Duration // one CONNECT attempt (default 10 s)
	RequestTimeout       time.Duration // twin requests without a context deadline (default 10 s)
	MethodTimeout        time.Duration // a method handler's deadline (default 30 s, the contract's default)
	MaxReconnectInterval time.Duration // cap of the reconnect backoff (default 30 s)
	QueueSize            int           // desired patches and method calls waiting for the handler (default 32)

	// Dialer, if set, opens the TCP connection; a simulator uses it to spread connections over several
	// source addresses (each address has only ~28k ephemeral ports to one destination).
	Dialer *net.Dialer
	// Logger gets the device's own log lines (default slog.Default()).
	Logger *slog.Logger

	// OnConnected is called after every (re)connect once the twin is synchronised (err nil) or the sync
	// failed; OnConnectionLost when the connection drops. Both run on their own goroutine.
	OnConnected      func(session int64, err error)
	OnConnectionLost func(err error)
}

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.KeepAlive, 60*time.Second)
	def(&c.ConnectTimeout, 10*time.Second)
	def(&c.RequestTimeout, 10*time.Second)
	def(&c.MethodTimeout, 30*time.Second)
	def(&c.MaxReconnectInterval, 30*time.Second)
	if c.QueueSize <= 0 {
		c.QueueSize = 32
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// DesiredUpdate is what a desired handler receives.
type DesiredUpdate struct {
	Version int64
	Desired json.RawMessage // the whole desired document after the update (without "$version")
	Patch   json.RawMessage // the merge patch; nil when Full
	Full    bool            // the document came from twin/get after a (re)connect, not from a patch

	// Reported is, when Full, the reported document the same twin/get returned (without "$version"): what
	// the registry holds about the device, e.g. the firmware version it reported before a restart.
	Reported        json.RawMessage
	ReportedVersion int64
}

// DesiredHandler is called, one update at a time and in version order, whenever desired state changes.
type DesiredHandler func(DesiredUpdate)

// MethodHandler answers a direct method. The result is sent as JSON (a []byte or json.RawMessage is sent
// as is) with status 200; a *MethodError chooses another status; any other error answers 500.
type MethodHandler func(ctx context.Context, payload []byte) (any, error)

// MethodError lets a method handler choose the response status.
type MethodError struct {
	Status  int
	Message string
}

// Error formats the status and message for logs; the caller receives them separately in the response.
func (e *MethodError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

// Device is one connected device. Create it with New, register handlers, then Connect.
type Device struct {
	cfg    Config
	log    *slog.Logger
	prefix string // devices/{id}/

	mu        sync.Mutex
	client    paho.Client
	waiters   map[string]chan response
	methods   map[string]MethodHandler
	onDesired DesiredHandler
	desired   []byte
	desiredV  int64
	reported  []byte // from the last twin/get
	reportedV int64
	closed    bool

	rid       atomic.Uint64
	session   atomic.Int64 // number of the current (or next) connection, in birth and LWT
	firstSync chan struct{}
	firstErr  error
	firstOnce sync.Once
	queue     serialQueue
}

type response struct {
	status int
	body   []byte
}

// New validates the configuration and prepares a device.
func New(cfg Config) (*Device, error) {
	cfg.setDefaults()
	if err := twin.ValidateID(cfg.ID); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	if cfg.BrokerURL == "" || cfg.Secret == "" {
		return nil, errors.New("device: broker URL and secret are required")
	}
	d := &Device{
		cfg:       cfg,
		log:       cfg.Logger.With("device", cfg.ID),
		prefix:    "devices/" + cfg.ID + "/",
		waiters:   make(map[string]chan response),
		methods:   make(map[string]MethodHandler),
		firstSync: make(chan struct{}),
	}
	d.queue.max = cfg.QueueSize
	return d, nil
}

// ID is the device id.
func (d *Device) ID() string { return d.cfg.ID }

// OnDesired registers the desired-state handler; register it before Connect to see the first document.
func (d *Device) OnDesired(h DesiredHandler) {
	d.mu.Lock()
	d.onDesired = h
	d.mu.Unlock()
}

// OnMethod registers the handler of direct method name.
func (d *Device) OnMethod(name string, h MethodHandler) {
	d.mu.Lock()
	d.methods[name] = h
	d.mu.Unlock()
}

// Desired returns the device's copy of the desired document and its version.
func (d *Device) Desired() (json.RawMessage, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(json.RawMessage(nil), d.desired...), d.desiredV
}

// Reported returns the reported document and version the last twin/get returned (nil before the first
// one). It is the registry's view at that moment, not updated by ReportPatch; a device uses it to resume
// from what it reported before a restart.
func (d *Device) Reported() (json.RawMessage, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(json.RawMessage(nil), d.reported...), d.reportedV
}

// Session is the number of the current connection (its birth and LWT carry it).
func (d *Device) Session() int64 { return d.session.Load() }

// IsConnected reports whether the device has a connection right now.
func (d *Device) IsConnected() bool {
	c := d.paho()
	return c != nil && c.IsConnectionOpen()
}

func (d *Device) paho() paho.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.client
}

// Connect connects (once; reconnects are automatic afterwards) and returns when the first twin sync is done.
// A refused CONNECT returns an error wrapping ErrNotAuthorized, and Connect may be called again. If the
// CONNECT succeeds but the first twin sync fails, the device stays connected (and syncs again after its next
// reconnect) and the error is returned; call Close to give up.
func (d *Device) Connect(ctx context.Context) error {
	d.mu.Lock()
	if d.client != nil || d.closed {
		d.mu.Unlock()
		return errors.New("device: Connect called twice or after Close")
	}
	n := d.newSession()
	opts := paho.NewClientOptions().
		AddBroker(d.cfg.BrokerURL).
		SetClientID(d.cfg.ID).
		SetUsername(d.cfg.ID).
		SetPassword(d.cfg.Secret).
		// Explicit 3.1.1: otherwise paho retries every refused CONNECT as MQTT 3.1, doubling auth load.
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(false).
		SetMaxReconnectInterval(d.cfg.MaxReconnectInterval).
		SetKeepAlive(d.cfg.KeepAlive).
		SetPingTimeout(10*time.Second).
		SetConnectTimeout(d.cfg.ConnectTimeout).
		SetWriteTimeout(10*time.Second).
		// Handlers never block (they hand work to the device's queue), so paho may keep its ordered
		// delivery, which keeps desired patches in order.
		SetOrderMatters(true).
		SetBinaryWill(d.prefix+"state", statePayload(false, n), 1, true).
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(d.onConnect).
		SetConnectionLostHandler(d.onConnectionLost).
		SetReconnectingHandler(func(_ paho.Client, o *paho.ClientOptions) {
			// Each connection gets a new session number; the LWT must carry the one its birth will.
			o.WillPayload = statePayload(false, d.newSession())
		})
	opts.SetStore(&copyingStore{MemoryStore: paho.NewMemoryStore()})
	if d.cfg.Dialer != nil {
		opts.SetDialer(d.cfg.Dialer)
	}
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

func statePayload(online bool, session int64) []byte {
	return fmt.Appendf(nil, `{"online":%t,"session":%d}`, online, session)
}

// onConnect runs on its own goroutine after every (re)connect: subscribe (subscriptions do not survive a
// clean session), announce the birth, then fetch the twin, because desired patches sent while the device
// was offline are not kept for it.
func (d *Device) onConnect(c paho.Client) {
	n := d.session.Load()
	err := d.sync(c, n)
	if err != nil && d.session.Load() == n {
		d.log.Warn("twin sync after connect failed", "session", n, "err", err)
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
}

func (d *Device) sync(c paho.Client, session int64) error {
	tok := c.SubscribeMultiple(map[string]byte{
		d.prefix + "twin/res/#":     1,
		d.prefix + "twin/desired/#": 1,
		d.prefix + "methods/req/#":  0,
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
	if err := waitToken(c.Publish(d.prefix+"state", 1, true, statePayload(true, session)), d.cfg.RequestTimeout); err != nil {
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

// twinGet fetches the twin and adopts its desired document unless a newer patch already arrived.
func (d *Device) twinGet() error {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.RequestTimeout)
	defer cancel()
	res, err := d.request(ctx, "twin/get", nil)
	if err != nil {
		return fmt.Errorf("twin get: %w", err)
	}
	if res.status != 200 {
		return fmt.Errorf("twin get: %w", responseError(res))
	}
	var props twin.Properties
	if err := json.Unmarshal(res.body, &props); err != nil {
		return fmt.Errorf("twin get: decode: %w", err)
	}
	doc := []byte(props.Desired.Doc)
	if len(doc) == 0 {
		doc = []byte("{}")
	}
	rep := []byte(props.Reported.Doc)
	if len(rep) == 0 {
		rep = []byte("{}")
	}
	d.mu.Lock()
	d.reported, d.reportedV = rep, props.Reported.Version
	d.mu.Unlock()
	// Through the queue, so the document and any patch that raced it are applied in arrival order; wait
	// for it so that Connect returns with the desired document in place.
	v := props.Desired.Version
	applied := make(chan struct{})
	if !d.queue.push(func() { d.applyDesired(v, doc, nil); close(applied) }) {
		return errors.New("twin get: desired queue full")
	}
	select {
	case <-applied:
	case <-time.After(d.cfg.MethodTimeout):
		d.log.Warn("desired handler is slow; continuing", "version", v)
	}
	return nil
}

// applyDesired runs on the device's queue, so updates are applied one at a time in arrival order. A full
// document (patch nil) replaces ours unless it is older; a patch is merged only if its version is newer.
func (d *Device) applyDesired(version int64, full, patch []byte) {
	d.mu.Lock()
	if version < d.desiredV || (patch != nil && version == d.desiredV) {
		d.mu.Unlock()
		d.log.Debug("ignoring stale desired update", "version", version, "have", d.desiredV)
		return
	}
	doc := full
	if patch != nil {
		merged, err := mergeDesired(d.desired, patch)
		if err != nil {
			d.mu.Unlock()
			d.log.Warn("ignoring malformed desired patch", "version", version, "err", err)
			return
		}
		doc = merged
	}
	d.desired, d.desiredV = doc, version
	h := d.onDesired
	u := DesiredUpdate{Version: version, Desired: append(json.RawMessage(nil), doc...), Patch: patch, Full: patch == nil}
	if u.Full {
		u.Reported, u.ReportedVersion = append(json.RawMessage(nil), d.reported...), d.reportedV
	}
	d.mu.Unlock()
	if h != nil {
		h(u)
	}
}

// mergeDesired applies an RFC 7386 patch; "$version", if the sender included it, is metadata, not state.
func mergeDesired(doc, patch []byte) ([]byte, error) {
	var p map[string]any
	if err := decodeObject(patch, &p); err != nil {
		return nil, err
	}
	delete(p, "$version")
	var m map[string]any
	if len(doc) > 0 {
		if err := decodeObject(doc, &m); err != nil {
			return nil, err
		}
	}
	return json.Marshal(twin.Merge(m, p))
}

func decodeObject(b []byte, v *map[string]any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if *v == nil {
		return errors.New("not a JSON object")
	}
	return nil
}

func (d *Device) onConnectionLost(_ paho.Client, err error) {
	d.log.Debug("connection lost", "err", err)
	if d.cfg.OnConnectionLost != nil {
		d.cfg.OnConnectionLost(err)
	}
}

// onMessage runs on paho's router goroutine and must not block or publish: responses complete a waiting
// request; desired patches and method calls go to the device's queue.
func (d *Device) onMessage(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	if !strings.HasPrefix(topic, d.prefix) {
		return
	}
	parts := strings.Split(topic[len(d.prefix):], "/")
	switch {
	case len(parts) == 4 && parts[0] == "twin" && parts[1] == "res":
		status, err := strconv.Atoi(parts[2])
		if err != nil {
			return
		}
		d.mu.Lock()
		ch := d.waiters[parts[3]]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- response{status: status, body: m.Payload()}:
			default:
			}
		}
	case len(parts) == 3 && parts[0] == "twin" && parts[1] == "desired":
		v, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil {
			d.log.Warn("ignoring desired patch with a bad version", "topic", topic)
			return
		}
		patch := append([]byte(nil), m.Payload()...)
		if !d.queue.push(func() { d.applyDesired(v, nil, patch) }) {
			d.log.Warn("desired queue full; the next twin/get will catch up", "version", v)
		}
	case len(parts) == 4 && parts[0] == "methods" && parts[1] == "req":
		name, rid, payload := parts[2], parts[3], append([]byte(nil), m.Payload()...)
		if !d.queue.push(func() { d.callMethod(name, rid, payload) }) {
			d.log.Warn("method queue full; dropping call", "method", name)
		}
	}
}

// callMethod runs a method handler on the device's queue and publishes its answer.
func (d *Device) callMethod(name, rid string, payload []byte) {
	d.mu.Lock()
	h := d.methods[name]
	c := d.client
	d.mu.Unlock()
	if c == nil {
		return
	}
	status, body := 200, []byte(nil)
	if h == nil {
		status, body = 404, errorBody(fmt.Sprintf("unknown method %q", name))
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.MethodTimeout)
		res, err := h(ctx, payload)
		cancel()
		var me *MethodError
		switch {
		case errors.As(err, &me):
			status, body = me.Status, errorBody(me.Message)
		case err != nil:
			status, body = 500, errorBody(err.Error())
		default:
			body, err = encode(res)
			if err != nil {
				status, body = 500, errorBody("encode result: "+err.Error())
			}
		}
	}
	topic := d.prefix + "methods/res/" + strconv.Itoa(status) + "/" + rid
	if err := waitToken(c.Publish(topic, 1, false, body), d.cfg.RequestTimeout); err != nil {
		d.log.Debug("publishing method response failed", "method", name, "err", err)
	}
}

// ReportPatch sends a reported-properties merge patch (any JSON-encodable value, or raw JSON bytes) and
// waits for the gateway's acknowledgement; it returns the new reported version.
func (d *Device) ReportPatch(ctx context.Context, patch any) (int64, error) {
	body, err := encode(patch)
	if err != nil {
		return 0, fmt.Errorf("report: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cfg.RequestTimeout)
		defer cancel()
	}
	res, err := d.request(ctx, "twin/reported", body)
	if err != nil {
		return 0, fmt.Errorf("report: %w", err)
	}
	if res.status/100 != 2 {
		return 0, fmt.Errorf("report: %w", responseError(res))
	}
	var ack struct {
		Version int64 `json:"version"`
	}
	if err := json.Unmarshal(res.body, &ack); err != nil {
		return 0, fmt.Errorf("report: decode acknowledgement: %w", err)
	}
	return ack.Version, nil
}

// ReportJobStatus publishes a job's progress on devices/{id}/jobs/{jobID}/status at QoS 1 and waits for the
// PUBACK, which means the gateway has the message (it reaches the registry in its next batch; there is no
// response). status is one of downloading, installing, rebooting, succeeded, failed — the gateway drops
// anything else; reason says why a job failed and may be empty; progress is a percentage (0 = not given).
// Without a deadline in ctx the wait is bounded by RequestTimeout.
func (d *Device) ReportJobStatus(ctx context.Context, jobID, status, reason string, progress int) error {
	if !validJobID(jobID) {
		return fmt.Errorf("job status: job id %q must be 1-64 characters of [A-Za-z0-9._-]", jobID)
	}
	if status == "" {
		return fmt.Errorf("job %s: status is required", jobID)
	}
	if progress < 0 || progress > 100 {
		return fmt.Errorf("job %s: progress %d outside 0..100", jobID, progress)
	}
	body, err := json.Marshal(struct {
		Status   string `json:"status"`
		Reason   string `json:"reason,omitempty"`
		Progress int    `json:"progress,omitempty"`
	}{status, reason, progress})
	if err != nil {
		return fmt.Errorf("job %s: %w", jobID, err)
	}
	c := d.paho()
	if c == nil || !c.IsConnectionOpen() {
		return fmt.Errorf("job %s: %w", jobID, ErrNotConnected)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cfg.RequestTimeout)
		defer cancel()
	}
	tok := c.Publish(d.prefix+"jobs/"+jobID+"/status", 1, false, body)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("job %s: publish status: %w", jobID, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("job %s: publish status: %w", jobID, ctx.Err())
	}
}

// validJobID mirrors the gateway's rule for ids in topics: one plain topic level of 1-64 characters.
func validJobID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// request publishes devices/{id}/{kind}/{rid} and waits for twin/res/{status}/{rid}.
func (d *Device) request(ctx context.Context, kind string, body []byte) (response, error) {
	c := d.paho()
	if c == nil || !c.IsConnectionOpen() {
		return response{}, ErrNotConnected
	}
	rid := strconv.FormatUint(d.rid.Add(1), 36)
	ch := make(chan response, 1)
	d.mu.Lock()
	d.waiters[rid] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.waiters, rid)
		d.mu.Unlock()
	}()
	if body == nil {
		body = []byte{}
	}
	tok := c.Publish(d.prefix+kind+"/"+rid, 1, false, body)
	done := tok.Done()
	for {
		select {
		case res := <-ch:
			return res, nil
		case <-done:
			if err := tok.Error(); err != nil {
				return response{}, err
			}
			done = nil
		case <-ctx.Done():
			return response{}, ctx.Err()
		}
	}
}

// PublishTelemetry sends one telemetry message at QoS 0 on devices/{id}/telemetry[/stream] without waiting.
func (d *Device) PublishTelemetry(stream string, payload any) error {
	body, err := encode(payload)
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	c := d.paho()
	if c == nil || !c.IsConnectionOpen() {
		return ErrNotConnected
	}
	topic := d.prefix + "telemetry"
	if stream != "" {
		topic += "/" + stream
	}
	tok := c.Publish(topic, 0, false, body)
	select {
	case <-tok.Done():
		return tok.Error()
	default:
		return nil
	}
}

// Close announces the device offline (a clean DISCONNECT does not fire the LWT) and disconnects.
func (d *Device) Close() {
	d.mu.Lock()
	c := d.client
	d.closed = true
	d.mu.Unlock()
	if c == nil {
		return
	}
	if c.IsConnectionOpen() {
		_ = waitToken(c.Publish(d.prefix+"state", 1, true, statePayload(false, d.session.Load())), time.Second)
	}
	c.Disconnect(250)
}

func waitToken(t paho.Token, timeout time.Duration) error {
	if !t.WaitTimeout(timeout) {
		return fmt.Errorf("timed out after %s", timeout)
	}
	return t.Error()
}

func responseError(r response) error {
	var body struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(r.body, &body)
	return &ResponseError{Status: r.status, Message: body.Error}
}

func errorBody(msg string) []byte {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	return b
}

func encode(v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return []byte("{}"), nil
	case []byte:
		return x, nil
	case json.RawMessage:
		return x, nil
	default:
		return json.Marshal(v)
	}
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

// serialQueue runs functions one at a time in order on a goroutine that exists only while there is work,
// so an idle device costs no goroutine.
type serialQueue struct {
	mu      sync.Mutex
	items   []func()
	running bool
	max     int
}

func (q *serialQueue) push(f func()) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= q.max {
		return false
	}
	q.items = append(q.items, f)
	if !q.running {
		q.running = true
		go q.run()
	}
	return true
}

func (q *serialQueue) run() {
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			q.running = false
			q.items = nil
			q.mu.Unlock()
			return
		}
		f := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.mu.Unlock()
		f()
	}
}
