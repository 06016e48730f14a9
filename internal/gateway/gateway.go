// Package gateway is fleetflow's device-facing edge: an embedded MQTT 3.1.1 broker (mochi-mqtt) whose auth and
// ACL hooks consult the registry, which records connection state and ingests twin traffic in batches.
//
// The broker is the only thing devices talk to, so it has to hold ~10k connections per process, survive
// reconnect storms without turning each CONNECT into a Postgres query, and cut off a revoked device at once.
// It therefore caches the credentials of active devices in memory, drops them on the registry's change
// notifications (LISTEN fleetflow_device) and re-checks any live session of a changed device, and writes
// everything it learns (connections, last-seen, reported properties, job progress) to the registry in batches
// rather than one transaction per message (docs/architecture.md, "The device protocol").
//
// Devices connect over TLS (Config.TLSListen, with a certificate reloaded when its files change) or, on
// loopback or where Config.AllowPlaintext says the network is trusted, over plain TCP: a CONNECT carries the
// device's secret, which must not cross a network in clear (docs/architecture.md, "Where secrets live").
//
// Workers and the CLI reach devices through a bus between processes, NATS (Config.Downlinks; docs/architecture.md,
// "Scale-out: gateways over NATS"): while a device's session is up here, the gateway subscribes to the device's
// subjects and relays desired patches and method calls to it, and a device connecting here ends its older
// session on any other gateway. A method call to a device no gateway holds is answered by the bus itself
// ("no responders"), so the offline answer holds across every gateway.
//
// Denied publishes: a QoS 0 publish outside the device's own topics is dropped and counted; mochi answers a
// denied QoS ≥ 1 publish from an MQTT 3.1.1 client by closing its connection (3.1.1 has no negative PUBACK,
// and no DISCONNECT from the server: see hook.OnPacketEncode). That is deliberate — only a misbehaving
// device hits it — and it still counts as an ACL denial.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// ServiceUsername is the MQTT username fleetflow's own services used before they moved to NATS; see
// protocol.ServiceUsername. The gateway refuses it: no service logs in over MQTT any more.
const ServiceUsername = protocol.ServiceUsername

// Store is what the gateway needs from the registry. It is declared here, on the consumer side, so that tests
// run the real broker against an in-memory fake; *registry.Registry implements it. Its types are the
// domain's (internal/fleet), so the gateway does not link the registry's Postgres adapter.
type Store interface {
	// DeviceAuth returns the device's status and credential digests; it wraps fleet.ErrNotFound when
	// the device does not exist.
	DeviceAuth(ctx context.Context, id string) (fleet.DeviceAuth, error)
	// GetTwin returns the device's twin (for twin/get). A store that also implements TwinBatchGetter is
	// asked for the twins of many requests at once instead.
	GetTwin(ctx context.Context, id string) (twin.Twin, error)
	// ApplyReported merges a batch of reported patches and returns one result per patch, in order.
	ApplyReported(ctx context.Context, patches []fleet.ReportedPatch) ([]fleet.ReportedResult, error)
	// RecordConnections records a batch of connection events.
	RecordConnections(ctx context.Context, events []fleet.ConnEvent) error
	// NextSessions hands out n session numbers, in increasing order, from one counter shared by every
	// gateway on the registry: the order of sessions across gateways is the order of these calls.
	NextSessions(ctx context.Context, n int) ([]int64, error)
	// RecordJobStatuses stores a batch of job progress messages (the latest per job and device wins).
	RecordJobStatuses(ctx context.Context, sts []fleet.JobStatus) error
	// ListenDeviceChanges calls fn with the id of every device whose status or credentials change, until
	// ctx ends. fn("") says notifications may have been missed (the listener reconnected): the gateway
	// then forgets its cache and re-checks every live session. fn(fleet.DevicesInserted) says new devices
	// were inserted (once per statement, unnamed): the gateway forgets the ids it remembered as unknown.
	// fn(fleet.SchemeChanged) says another scheme version may be in force: the gateway reads it again.
	ListenDeviceChanges(ctx context.Context, fn func(id string)) error
	// ActiveScheme returns the metadata scheme in force, compiled, or nil when none is set: reported patches
	// are checked against its reported-properties schema (docs/architecture.md, "Metadata scheme").
	ActiveScheme(ctx context.Context) (*scheme.Scheme, error)
}

// TwinBatchGetter is a Store that reads many twins in one round trip: a reconnect storm sends one twin/get
// per device, and one registry round trip per request is what a gateway on a loaded machine cannot afford.
type TwinBatchGetter interface {
	// GetTwins returns the twins of the devices of ids that exist; ids it does not return are unknown.
	GetTwins(ctx context.Context, ids []string) (map[string]twin.Twin, error)
}

// Config tunes the gateway. Zero values take the defaults below, which are sized for ~10k devices per
// process on a 2-core machine.
type Config struct {
	// Listen is the TCP address of the plaintext MQTT listener, e.g. "127.0.0.1:1883" (":0" picks a free
	// port). Plaintext carries device secrets in clear, so Validate refuses an address
	// that is not loopback unless AllowPlaintext is set.
	Listen string
	// AllowPlaintext lets the plaintext listener bind a non-loopback address (a private network, or a TLS
	// terminator in front of the gateway).
	AllowPlaintext bool
	// DeviceCAFile is the fleet CA (PEM; several certificates allowed, e.g. while a CA is replaced) whose
	// client certificates the TLS listener (below) accepts: a device presenting one whose subject's common
	// name is its id and whose fingerprint the registry holds needs no secret (docs/architecture.md, "Device
	// certificates"). It is re-read when it changes, like the certificate. Empty: the listener asks for no
	// client certificate.
	DeviceCAFile string
	// TLSListen is the address of the MQTT-over-TLS listener (default 127.0.0.1:8883); it is opened only when
	// TLSCertFile and TLSKeyFile are set. The pair is reloaded when the files change (see pki.Reloader), at most
	// every TLSReloadEvery (default pki.DefaultReloadEvery).
	TLSListen      string
	TLSCertFile    string
	TLSKeyFile     string
	TLSReloadEvery time.Duration
	// Downlinks connects the gateway to the bus over which workers, the CLI and other gateways reach its
	// devices (internal/channel's Relay over NATS). Nil: no downlinks, uplinks only (tests of ingest and auth).
	// The gateway does not close it.
	Downlinks Downlinks
	// Enroller registers devices on first contact (docs/architecture.md, "Zero-touch enrollment"): a CONNECT
	// of an id the registry does not know, whose password is derived from an enabled enrollment group's key,
	// is held while the device is registered and then admitted. Nil: unknown ids are refused.
	Enroller Enroller
	// EnrollTimeout bounds how long a CONNECT waits for its registration (default 10 s).
	EnrollTimeout time.Duration

	// AuthCacheSize caps the number of cached device records (default 100,000).
	AuthCacheSize int
	// AuthConcurrency caps registry lookups in flight, so a storm of distinct ids cannot exhaust the
	// Postgres pool (default 16).
	AuthConcurrency int
	// AuthTimeout bounds one CONNECT's wait for the registry (default 5 s).
	AuthTimeout time.Duration
	// Against floods of CONNECTs with unknown ids or wrong secrets (docs/architecture.md, "Abuse: floods of
	// CONNECTs"): AuthColdConcurrency caps the lookups of ids this gateway has never seen active, which do
	// not take the AuthConcurrency slots of returning devices (default AuthConcurrency/4, at least 1);
	// AuthNegativeTTL is how long an id the registry does not know is answered "unknown" without asking
	// again (default 10 s, negative: never cached); AuthFailRate and AuthFailBurst are the token bucket of
	// failed CONNECTs each remote IP address may make, per second and at once, before its CONNECTs are
	// refused without a lookup (defaults 10/s and 50; negative: no limit).
	AuthColdConcurrency int
	AuthNegativeTTL     time.Duration
	AuthFailRate        float64
	AuthFailBurst       int

	// Admission control (docs/architecture.md, "Admission control: refusing what cannot be served"): a CONNECT
	// is refused at once with "server unavailable" (MQTT 5: "server busy"), so that the device backs off
	// rather than times out, when more than AdmitPending CONNECTs are being authenticated (default 256),
	// when the process's goroutines wait longer than AdmitLag for a core (default 1 s), or when its registry
	// lookup takes longer than AdmitWait (default 3 s, well within the devices' 10 s CONNECT timeout; the
	// lookup goes on and fills the cache for the device's next attempt). Negative turns a bound off.
	AdmitPending int
	AdmitLag     time.Duration
	AdmitWait    time.Duration

	// FlushInterval is how often connection events are written (default 200 ms); FlushEvents forces an
	// earlier write when that many are pending (default 1,000).
	FlushInterval time.Duration
	FlushEvents   int
	// ReportedBatch and ReportedWait bound one ApplyReported batch: at most this many patches, and the
	// first patch waits at most this long for company (defaults 500 and 50 ms). Job status messages are
	// batched for RecordJobStatuses with the same bounds.
	ReportedBatch int
	ReportedWait  time.Duration
	// ReportedLanes is how many ApplyReported batches may be in flight at once (default 2). A device's
	// patches always take the same lane, so they still apply in order; more lanes keep the registry busy
	// while a batch waits for a core on a loaded machine (docs/architecture.md, "Ingest lanes").
	ReportedLanes int
	// QueueSize bounds each ingest queue; requests beyond it are answered 429 (default 10,000).
	QueueSize int
	// Workers serve twin/get requests (default 4), each reading the twins of the requests queued meanwhile
	// (up to ReportedBatch) in one registry round trip when the store can (TwinBatchGetter); RecheckWorkers
	// re-verify live sessions of changed devices (default 4).
	Workers        int
	RecheckWorkers int
	// StoreTimeout bounds each batched registry write (default 10 s).
	StoreTimeout time.Duration
	// RequestMaxWait is how long a twin/get or reported patch may wait in its queue and still be served
	// (default 8 s: the device SDK waits 10 s for the answer, and the registry round trip comes after the
	// wait); one that waited longer is answered 503 without being served. Negative: always served.
	RequestMaxWait time.Duration

	// Broker memory knobs; each connection costs roughly its buffers plus MaxWritesPending pointers.
	MaxWritesPending int           // outbound queue per client (default 128)
	BufferSize       int           // read and write buffer per client (default 1 KiB)
	MaxInflight      int           // stored QoS>0 messages per client (default 256)
	SessionExpiry    time.Duration // how long a persistent (clean=false) session outlives its connection (default 1 h)
	MaxPacketSize    int           // largest accepted packet (default 256 KiB)

	// Metrics receives the gateway's counters (read from Stats' atomics at scrape time) and the latency and
	// size histograms of its batched registry writes; nil keeps them private.
	Metrics *metrics.Registry

	// BrokerLogger receives mochi's own log lines; nil means the gateway's logger at level Error, because
	// mochi logs every refused CONNECT as a warning, which would flood the log in a reconnect storm.
	BrokerLogger *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:1883"
	}
	if c.TLSListen == "" {
		c.TLSListen = "127.0.0.1:8883"
	}
	def(&c.AuthCacheSize, 100_000)
	def(&c.AuthConcurrency, 16)
	def(&c.AuthColdConcurrency, max(1, c.AuthConcurrency/4))
	if c.AuthNegativeTTL == 0 {
		c.AuthNegativeTTL = 10 * time.Second
	}
	if c.AuthFailRate == 0 {
		c.AuthFailRate = 10
	}
	if c.AuthFailBurst == 0 {
		c.AuthFailBurst = 50
	}
	defDur(&c.AuthTimeout, 5*time.Second)
	if c.AdmitPending == 0 {
		c.AdmitPending = 256
	}
	if c.AdmitLag == 0 {
		c.AdmitLag = time.Second
	}
	if c.AdmitWait == 0 {
		c.AdmitWait = 3 * time.Second
	}
	defDur(&c.FlushInterval, 200*time.Millisecond)
	def(&c.FlushEvents, 1000)
	def(&c.ReportedBatch, 500)
	def(&c.ReportedLanes, 2)
	defDur(&c.ReportedWait, 50*time.Millisecond)
	def(&c.QueueSize, 10_000)
	def(&c.Workers, 4)
	def(&c.RecheckWorkers, 4)
	defDur(&c.StoreTimeout, 10*time.Second)
	if c.RequestMaxWait == 0 {
		c.RequestMaxWait = 8 * time.Second
	}
	def(&c.MaxWritesPending, 128)
	def(&c.BufferSize, 1024)
	def(&c.MaxInflight, 256)
	defDur(&c.SessionExpiry, time.Hour)
	def(&c.MaxPacketSize, 256*1024)
	if c.EnrollTimeout <= 0 {
		c.EnrollTimeout = 10 * time.Second
	}
}

// Enroller registers unknown devices that prove membership of an enrollment group (internal/enroll's
// Enroller): ok when the device exists now; reason when a group matched but refused it; err when the
// registration could not be run.
type Enroller interface {
	Enroll(ctx context.Context, id, secret string) (ok bool, reason string, err error)
	// EnrollCert is Enroll for a device that presented a client certificate (x509 groups).
	EnrollCert(ctx context.Context, id string, cert *x509.Certificate) (ok bool, reason string, err error)
	// ClientCAs are the CAs whose client certificates the TLS listener accepts for first contacts.
	ClientCAs(ctx context.Context) []*x509.Certificate
	// Invalidate says the enrollment groups changed (fleet.EnrollmentGroupsChanged): read them again now.
	Invalidate()
}

// Stats are the gateway's counters since start; Config.Metrics exports them as Prometheus metrics.
type Stats struct {
	Connected         int64 // device sessions open now
	Connects          int64 // device sessions established
	AuthFailures      int64 // CONNECTs refused
	ACLDenials        int64 // publishes, subscriptions or wills refused by the ACL
	Kicks             int64 // live sessions dropped because the device was revoked (or Kick was called)
	Takeovers         int64 // live sessions dropped because the device connected to another gateway
	MessagesIn        int64 // publishes received from devices
	MessagesOut       int64 // publishes written to devices
	SlowDropped       int64 // publishes dropped because the receiving client's outbound queue was full
	Telemetry         int64 // telemetry messages
	TwinGets          int64 // twin/get requests answered
	JobStatus         int64 // valid job status messages recorded in the registry
	JobStatusDropped  int64 // valid job status messages lost: queue full, or the registry write kept failing
	MethodResponses   int64 // method responses
	MethodsOffline    int64 // method requests answered 404 DeviceNotOnline by the gateway (the device left as they came)
	MethodsRelayed    int64 // method requests relayed from the bus to devices
	DesiredRelayed    int64 // desired patches relayed from the bus to devices
	MethodsPending    int64 // relayed method requests awaiting the device's answer
	Malformed         int64 // device messages dropped or refused as malformed (topic or payload)
	Throttled         int64 // requests answered 429 (or job statuses dropped) because an ingest queue was full
	Overdue           int64 // twin/get and reported requests answered 503 unserved: they waited past RequestMaxWait
	ReportedApplied   int64 // reported patches merged into the registry
	ReportedFailed    int64 // reported patches refused or failed (including malformed)
	SchemeRefused     int64 // reported patches refused because they violate the scheme's reported-properties schema (also in ReportedFailed)
	IngestBatches     int64 // ApplyReported calls
	LastBatchSize     int64 // patches in the last ApplyReported call
	LastBatchLatency  time.Duration
	ConnEventsWritten int64 // connection events recorded in the registry
	ConnEventsDropped int64 // connection events given up after repeated write failures
	StoreErrors       int64 // failed registry calls of any kind
	AuthCacheSize     int64 // cached device records
	AuthLookups       int64 // registry queries made for CONNECTs
	AuthCacheHits     int64 // CONNECTs answered from the cache
	AuthNegativeHits  int64 // CONNECTs of unknown ids answered from the negative cache
	AuthRateLimited   int64 // CONNECTs refused without a lookup: their address had used up its failures
	AuthShed          int64 // CONNECTs of never-seen ids refused at once: too many such lookups waited
	RefusedBusy       int64 // CONNECTs refused "server unavailable" by admission control, for any reason
	AdmitPending      int64 // CONNECTs being authenticated now
	Enrolled          int64 // unknown ids registered on first contact through an enrollment group
	EnrollRefused     int64 // unknown ids whose derived secret matched a group that refused them, or whose registration failed
	AuthExpired       int64 // CONNECTs with the right credentials refused because they have expired
	AuthRefetched     int64 // credentials that did not match a cached record, decided again on a fresh one
}

// counters are the atomics behind Stats.
type counters struct {
	connected, connects, authFailures, aclDenials, kicks, takeovers                   atomic.Int64
	messagesIn, telemetry, twinGets, jobStatus, methodResponses, malformed, throttled atomic.Int64
	overdue                                                                           atomic.Int64
	reportedApplied, reportedFailed, ingestBatches, lastBatchSize, lastBatchLatency   atomic.Int64
	connEventsWritten, connEventsDropped, storeErrors                                 atomic.Int64
	jobStatusDropped, methodsOffline, methodsRelayed, desiredRelayed                  atomic.Int64
	authRateLimited, enrolled, enrollRefused, authExpired, authRefetched              atomic.Int64
	// Reported patches refused, by reason (fleetflow_gateway_reported_refused_total).
	refusedTooLarge, refusedMalformed, refusedScheme, refusedUnknown, refusedInactive atomic.Int64
}

// Gateway is the embedded broker with its registry-backed hooks and ingest pipeline.
type Gateway struct {
	cfg   Config
	store Store
	log   *slog.Logger

	server      *mqtt.Server
	listener    net.Listener
	tlsListener net.Listener // nil without a certificate
	auth        *authCache
	failures    *failLimiter // nil: no per-address limit
	admit       *admission
	decided     sync.Map // *mqtt.Client → bool: OnConnect's authentication decision for OnConnectAuthenticate
	sessions    *sessions
	events      *eventBuffer
	recheck     *recheckQueue
	getQ        chan twinRequest
	reportQ     []chan twinRequest // one per lane (Config.ReportedLanes)
	jobQ        chan jobStatusMsg
	c           counters
	m           ingestMetrics

	nums    *sessionNums // session numbers from the registry's sequence
	expired expiredNotes // devices whose expired-credential refusal was recently put on their timeline
	methods *methodTable // method requests relayed to devices, awaiting their answers

	// The metadata scheme reported patches are checked against (reportscheme.go): the state in force,
	// the signal that reads it again and the devices whose refusal was recently put on their timeline (each
	// ingest lane keeps its own verdicts: laneMemo).
	scheme       atomic.Pointer[schemeState]
	schemeReload chan struct{}
	reportNotes  expiredNotes

	ctx       context.Context // background work; cancelled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	startOnce sync.Once
	closeOnce sync.Once
	started   atomic.Bool
}

// New prepares a gateway; Start opens the listener.
func New(cfg Config, store Store, log *slog.Logger) *Gateway {
	cfg.setDefaults()
	if log == nil {
		log = slog.Default()
	}
	g := &Gateway{
		cfg:      cfg,
		store:    store,
		log:      log.With("component", "gateway"),
		sessions: newSessions(),
		recheck:  newRecheckQueue(),
		getQ:     make(chan twinRequest, cfg.QueueSize),
		reportQ:  make([]chan twinRequest, cfg.ReportedLanes),
		jobQ:     make(chan jobStatusMsg, cfg.QueueSize),
		methods:  newMethodTable(),

		schemeReload: make(chan struct{}, 1),
		reportNotes:  expiredNotes{every: reportNoteEvery},
	}
	for i := range g.reportQ {
		g.reportQ[i] = make(chan twinRequest, max(1, cfg.QueueSize/cfg.ReportedLanes))
	}
	g.events = newEventBuffer(cfg.FlushEvents)
	g.auth = newAuthCache(store.DeviceAuth, cfg.AuthCacheSize, cfg.AuthConcurrency, cfg.AuthTimeout)
	g.auth.coldSem = make(chan struct{}, cfg.AuthColdConcurrency)
	g.auth.negTTL = max(0, cfg.AuthNegativeTTL)
	g.failures = newFailLimiter(cfg.AuthFailRate, cfg.AuthFailBurst)
	g.admit = newAdmission(cfg.AdmitPending, cfg.AdmitLag, cfg.AdmitWait)
	g.nums = newSessionNums(store.NextSessions, cfg.AuthTimeout)
	reg := cfg.Metrics
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	g.m = g.registerMetrics(reg)
	return g
}

// Start listens on cfg.Listen and starts the broker and the background work (change listener, flusher,
// ingest workers). ctx only bounds the start; the gateway runs until Close.
func (g *Gateway) Start(ctx context.Context) error {
	err := errors.New("gateway already started")
	g.startOnce.Do(func() { err = g.start(ctx) })
	return err
}

func (g *Gateway) start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.cfg.Validate(); err != nil {
		return err
	}
	brokerLog := g.cfg.BrokerLogger
	if brokerLog == nil {
		brokerLog = slog.New(minLevel{Handler: g.log.Handler(), min: slog.LevelError})
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = int32(g.cfg.MaxWritesPending)
	caps.MaximumInflight = uint16(min(g.cfg.MaxInflight, 65535))
	caps.MaximumSessionExpiryInterval = uint32(g.cfg.SessionExpiry / time.Second)
	// mochi deletes retained messages older than this; the retained devices/{id}/state must live as
	// long as the device's state does, and queued QoS>0 messages are already bounded by MaxInflight.
	caps.MaximumMessageExpiryInterval = 0
	caps.MaximumPacketSize = uint32(g.cfg.MaxPacketSize)
	caps.TopicAliasMaximum = 0 // devices speak 3.1.1; aliases would only cost memory for v5 clients
	server := mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetReadBufferSize:  g.cfg.BufferSize,
		ClientNetWriteBufferSize: g.cfg.BufferSize,
		Logger:                   brokerLog,
		SysTopicResendInterval:   60, // $SYS is not part of the contract; refreshing it costs a ReadMemStats
		InlineClient:             true,
	})
	if err := server.AddHook(&hook{g: g}, nil); err != nil {
		return fmt.Errorf("gateway: add hook: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w", g.cfg.Listen, err)
	}
	if err := server.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		ln.Close()
		return fmt.Errorf("gateway: add listener: %w", err)
	}
	tlsLn, err := g.listenTLS(ctx, server)
	if err != nil {
		ln.Close()
		return err
	}
	closeListeners := func() {
		ln.Close()
		if tlsLn != nil {
			tlsLn.Close()
		}
	}
	// One inline subscription sees every message under devices/; the handler picks out what devices
	// sent and ignores cloud-to-device traffic, so malformed device topics can be counted too.
	if err := server.Subscribe(protocol.AllDevicesFilter, 1, g.onMessage); err != nil {
		closeListeners()
		return fmt.Errorf("gateway: inline subscribe: %w", err)
	}
	g.server, g.listener, g.tlsListener = server, ln, tlsLn
	g.ctx, g.cancel = context.WithCancel(context.WithoutCancel(ctx))
	// The scheme is read before devices are served, so that their first reports are checked; a registry
	// that cannot answer now only delays it (reports are answered 503 until it is read).
	if err := g.loadScheme(ctx); err != nil {
		g.log.Warn("reading the metadata scheme failed; retrying", "err", err)
		g.reloadScheme()
	}

	g.goBackground(func() { g.admit.probe(g.ctx.Done()) })
	g.goBackground(g.flushLoop)
	for _, q := range g.reportQ {
		g.goBackground(func() { g.reportedLoop(q) })
	}
	g.goBackground(g.jobStatusLoop)
	for range g.cfg.Workers {
		g.goBackground(g.twinGetLoop)
	}
	for range g.cfg.RecheckWorkers {
		g.goBackground(g.recheckLoop)
	}
	g.goBackground(g.listenLoop)
	g.goBackground(g.schemeLoop)
	if g.cfg.Downlinks != nil {
		g.goBackground(g.downlinkLoop)
	}

	if err := server.Serve(); err != nil {
		g.cancel()
		g.wg.Wait()
		closeListeners()
		return fmt.Errorf("gateway: serve: %w", err)
	}
	g.started.Store(true)
	if tlsLn != nil {
		g.log.Info("gateway listening", "addr", ln.Addr().String(), "tls", tlsLn.Addr().String())
	} else {
		g.log.Info("gateway listening", "addr", ln.Addr().String())
	}
	return nil
}

// listenTLS opens the MQTT-over-TLS listener when a certificate is configured (nil, nil otherwise). mochi's
// own listeners.NewTCP takes a tls.Config in listeners.Config and calls tls.Listen in Init; the gateway
// opens the socket itself instead (as for plaintext, through listeners.NewNet), so that an address in use
// fails Start at once and TLSAddr knows the port ":0" picked. The handshake runs on the client's own
// goroutine at its first read, so a slow or failed handshake never holds up the accept loop.
func (g *Gateway) listenTLS(ctx context.Context, server *mqtt.Server) (net.Listener, error) {
	if g.cfg.TLSCertFile == "" {
		return nil, nil
	}
	certs, err := pki.NewReloader(g.cfg.TLSCertFile, g.cfg.TLSKeyFile, g.cfg.TLSReloadEvery, g.log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	var lc net.ListenConfig
	raw, err := lc.Listen(ctx, "tcp", g.cfg.TLSListen)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen for TLS on %s: %w", g.cfg.TLSListen, err)
	}
	scfg := certs.ServerConfig()
	var cas *pki.PoolReloader
	if g.cfg.DeviceCAFile != "" {
		cas, err = pki.NewPoolReloader(g.cfg.DeviceCAFile, g.cfg.TLSReloadEvery, g.log)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("gateway: device CA: %w", err)
		}
	}
	switch {
	case g.cfg.Enroller != nil:
		// Client certificates from the fleet CA and from the CAs of x509 enrollment groups (first contacts).
		scfg = pki.RequestClientCertsFromFunc(scfg, newClientCAs(cas, g.cfg.Enroller).pool)
	case cas != nil:
		scfg = pki.RequestClientCertsFrom(scfg, cas)
	}
	ln := tls.NewListener(raw, scfg)
	if err := server.AddListener(listeners.NewNet("tls", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("gateway: add TLS listener: %w", err)
	}
	return ln, nil
}

// Validate checks the listener settings without opening anything: plaintext MQTT only on loopback unless
// AllowPlaintext says otherwise (device secrets would cross the network in clear,
// docs/architecture.md, "Where secrets live"), and a TLS certificate always with its key.
func (c Config) Validate() error {
	listen := c.Listen
	if listen == "" {
		listen = "127.0.0.1:1883"
	}
	if !c.AllowPlaintext && !IsLoopbackAddr(listen) {
		return fmt.Errorf("gateway: refusing plaintext MQTT on %s, which is not a loopback address: device secrets "+
			"would cross the network in clear; serve devices over TLS (--tls-cert, --tls-key, "+
			"--tls-listen) and keep --listen on 127.0.0.1, or pass --allow-plaintext (FLEETFLOW_GATEWAY_ALLOW_PLAINTEXT=true) "+
			"if the network is trusted", listen)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("gateway: a TLS certificate needs its key and a key its certificate (--tls-cert and --tls-key)")
	}
	if c.DeviceCAFile != "" && c.TLSCertFile == "" {
		return errors.New("gateway: device certificates (--device-ca) are presented over TLS: give the listener a certificate too (--tls-cert and --tls-key)")
	}
	return nil
}

// IsLoopbackAddr reports whether a listen address host:port binds only loopback: an IP in 127.0.0.0/8 or ::1,
// or "localhost". An empty host (":1883") binds every interface and is not loopback; other names are not
// resolved, since what they resolve to can change.
func IsLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (g *Gateway) goBackground(fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
}

// Addr is the plaintext listener's address (useful with ":0"); empty before Start.
func (g *Gateway) Addr() string {
	if g.listener == nil {
		return ""
	}
	return g.listener.Addr().String()
}

// TLSAddr is the TLS listener's address; empty before Start and without a certificate.
func (g *Gateway) TLSAddr() string {
	if g.tlsListener == nil {
		return ""
	}
	return g.tlsListener.Addr().String()
}

// Close disconnects every client, records their disconnection, answers or drops queued requests and stops
// the background work. It is safe to call more than once.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		if !g.started.Load() {
			return
		}
		// mochi v2.7.9's Close deadlocks if a client is removed while it lists the listener's clients
		// (Clients.GetByListener read-locks twice; a waiting Delete blocks the second lock). So stop accepting
		// first, disconnect everyone ourselves and wait until the client list is empty, and only then Close.
		_ = g.listener.Close()
		if g.tlsListener != nil {
			_ = g.tlsListener.Close()
		}
		for _, cl := range g.server.Clients.GetAll() {
			if !cl.Net.Inline {
				g.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if !hasNetworkClients(g.server) {
				break
			}
		}
		// Closing the broker before the background loops means no more messages arrive, and every session's
		// ConnDown is queued before the final flush below.
		if err := g.server.Close(); err != nil {
			g.log.Warn("closing broker", "err", err)
		}
		g.cancel()
		g.wg.Wait()
		g.log.Info("gateway stopped")
	})
	return nil
}

// Kick drops the live session of device id, if any. Its LWT is published; whether it may reconnect is the
// registry's decision at its next CONNECT.
func (g *Gateway) Kick(id string) bool {
	if g.server == nil {
		return false
	}
	s := g.sessions.get(id)
	if s == nil {
		return false
	}
	g.kick(s, "kick requested", packets.ErrAdministrativeAction)
	return true
}

// kick ends a device's session. An MQTT 5 client is told why with a DISCONNECT carrying code; an MQTT 3.1.1
// connection is only closed, because 3.1.1 has no DISCONNECT from the server (hook.OnPacketEncode).
func (g *Gateway) kick(s *session, reason string, code packets.Code) {
	g.c.kicks.Add(1)
	g.log.Info("dropping device session", "device", s.id, "session", s.num, "reason", reason)
	_ = g.server.DisconnectClient(s.cl, code)
}

// Stats returns a snapshot of the counters.
func (g *Gateway) Stats() Stats {
	st := Stats{
		Connected:         g.c.connected.Load(),
		Connects:          g.c.connects.Load(),
		AuthFailures:      g.c.authFailures.Load(),
		ACLDenials:        g.c.aclDenials.Load(),
		Kicks:             g.c.kicks.Load(),
		Takeovers:         g.c.takeovers.Load(),
		MessagesIn:        g.c.messagesIn.Load(),
		Telemetry:         g.c.telemetry.Load(),
		TwinGets:          g.c.twinGets.Load(),
		JobStatus:         g.c.jobStatus.Load(),
		JobStatusDropped:  g.c.jobStatusDropped.Load(),
		MethodResponses:   g.c.methodResponses.Load(),
		MethodsOffline:    g.c.methodsOffline.Load(),
		MethodsRelayed:    g.c.methodsRelayed.Load(),
		DesiredRelayed:    g.c.desiredRelayed.Load(),
		MethodsPending:    int64(g.methods.len()),
		Malformed:         g.c.malformed.Load(),
		Throttled:         g.c.throttled.Load(),
		Overdue:           g.c.overdue.Load(),
		ReportedApplied:   g.c.reportedApplied.Load(),
		ReportedFailed:    g.c.reportedFailed.Load(),
		SchemeRefused:     g.c.refusedScheme.Load(),
		IngestBatches:     g.c.ingestBatches.Load(),
		LastBatchSize:     g.c.lastBatchSize.Load(),
		LastBatchLatency:  time.Duration(g.c.lastBatchLatency.Load()),
		ConnEventsWritten: g.c.connEventsWritten.Load(),
		ConnEventsDropped: g.c.connEventsDropped.Load(),
		StoreErrors:       g.c.storeErrors.Load(),
		AuthCacheSize:     int64(g.auth.len()),
		AuthLookups:       g.auth.lookups.Load(),
		AuthCacheHits:     g.auth.hits.Load(),
		AuthNegativeHits:  g.auth.negHits.Load(),
		AuthRateLimited:   g.c.authRateLimited.Load(),
		AuthShed:          g.auth.coldShed.Load(),
		RefusedBusy:       g.admit.total(),
		AdmitPending:      g.admit.pending.Load(),
		Enrolled:          g.c.enrolled.Load(),
		EnrollRefused:     g.c.enrollRefused.Load(),
		AuthExpired:       g.c.authExpired.Load(),
		AuthRefetched:     g.c.authRefetched.Load(),
	}
	if g.server != nil {
		st.MessagesOut = atomic.LoadInt64(&g.server.Info.MessagesSent)
		st.SlowDropped = atomic.LoadInt64(&g.server.Info.MessagesDropped)
	}
	return st
}

// minLevel filters a handler to records at or above min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

// Enabled implements slog.Handler: records below the minimum level are dropped.
func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// WithAttrs implements slog.Handler, keeping the minimum level.
func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

// WithGroup implements slog.Handler, keeping the minimum level.
func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}

// hasNetworkClients reports whether any client other than the inline one is still attached.
func hasNetworkClients(s *mqtt.Server) bool {
	for _, cl := range s.Clients.GetAll() {
		// A closed persistent session stays listed until it expires (an hour by default), and mochi deletes
		// nothing for it meanwhile: waiting for it would only spend Close's whole deadline. An open
		// connection, or a closed clean one mochi is about to delete, is waited for.
		if !cl.Net.Inline && (!cl.Closed() || cleanSession(cl)) {
			return true
		}
	}
	return false
}

// observerIDs numbers Observe's inline subscriptions; 1 is the gateway's own (devices/#).
var observerIDs atomic.Int64

func init() { observerIDs.Store(1000) }

// Observe calls fn for every message the broker routes on topics matching filter, starting with the
// retained messages that match it (retained = true), until stop is called. fn runs on the publisher's
// goroutine and must not block. It watches the broker from inside, as no client may since services reach
// devices over NATS: tests use it in place of a spying connection, and an operator's diagnostics could.
func (g *Gateway) Observe(filter string, fn func(topic string, payload []byte, retained bool)) (stop func(), err error) {
	if g.server == nil {
		return nil, errors.New("gateway: not started")
	}
	id := int(observerIDs.Add(1))
	// mochi hands the retained messages to an inline subscriber inside Subscribe; a message published live
	// at that moment may be taken for a retained one, which only a test could notice.
	var subscribing atomic.Bool
	subscribing.Store(true)
	err = g.server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload, pk.FixedHeader.Retain && subscribing.Load())
	})
	subscribing.Store(false)
	if err != nil {
		return nil, fmt.Errorf("gateway: observe %s: %w", filter, err)
	}
	return func() { _ = g.server.Unsubscribe(filter, id) }, nil
}

// Inject publishes a message to the broker as the gateway itself, bypassing the bus: tests use it to
// send devices what a relay would (or what no relay would, to see the device refuse it).
func (g *Gateway) Inject(topic string, payload []byte, qos byte) error {
	if g.server == nil {
		return errors.New("gateway: not started")
	}
	return g.server.Publish(topic, payload, false, qos)
}
