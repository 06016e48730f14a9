// Package device is the small client a real device would embed to speak fleetflow's device channel
// (docs/architecture.md, "The device protocol") over MQTT 3.1.1 with paho: twin get/reported/desired, direct methods, telemetry, job progress
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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/protocol"
)

// ErrNotAuthorized is returned by Connect when the gateway refuses the CONNECT: unknown device, wrong
// secret, or a device that is disabled or retired. Retrying with the same credentials will not help.
var ErrNotAuthorized = errors.New("not authorized")

// ErrServerBusy is returned by Connect when the gateway answers "server unavailable": it cannot serve the
// CONNECT in time (docs/architecture.md, "Admission control: refusing what cannot be served"). The device
// should try again later, after a random wait that grows with each such refusal; its automatic reconnects
// do that themselves.
var ErrServerBusy = errors.New("gateway busy (server unavailable)")

// ErrNotConnected is returned for requests made while the device has no connection.
var ErrNotConnected = errors.New("not connected")

// ErrConnectionLost is returned for a request whose connection dropped before its answer came: the answer
// would go to the old connection, so waiting longer only delays the retry (errors.Is(err, ErrNotConnected)).
var ErrConnectionLost = fmt.Errorf("connection lost before the answer: %w", ErrNotConnected)

// Device is one connected device. Create it with New, register handlers, then Connect.
type Device struct {
	cfg Config
	log *slog.Logger

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
	attempt   atomic.Pointer[string] // the gateway of the CONNECT in progress
	broker    atomic.Pointer[string] // the gateway of the current (or last) connection
	session   atomic.Int64           // number of the current (or next) connection, in birth and LWT
	firstSync chan struct{}
	firstErr  error
	firstOnce sync.Once
	closing   chan struct{} // closed by Close: ends a reconnect's jitter wait
	servers   []*url.URL    // every gateway of the device, in its order; a reconnect tries one at a time
	// failures counts the reconnect attempts that failed (a refusal, busy or not, a dial or CONNECT that
	// failed, a connection lost before its first sync or soon after it) since the last connection that
	// lasted (failuresAfterLoss); it grows the reconnect backoff (reconnectWait).
	failures atomic.Int64
	synced   atomic.Int64 // session number of the last connection whose sync succeeded
	syncedAt atomic.Int64 // when that sync succeeded (Unix nanoseconds)
	queue    serialQueue
	creds    credState
}

// New validates the configuration and prepares a device.
func New(cfg Config) (*Device, error) {
	cfg.setDefaults()
	if err := cfg.setBrokers(); err != nil {
		return nil, err
	}
	if err := protocol.ValidateDeviceID(cfg.ID); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	if cfg.BrokerURL == "" {
		return nil, errors.New("device: broker URL is required")
	}
	if err := cfg.prepareCredentials(); err != nil {
		return nil, err
	}
	d := &Device{
		cfg:       cfg,
		log:       cfg.Logger.With("device", cfg.ID),
		waiters:   make(map[string]chan response),
		methods:   make(map[string]MethodHandler),
		firstSync: make(chan struct{}),
		closing:   make(chan struct{}),
	}
	d.queue.max = cfg.QueueSize
	d.initCredentials()
	if cfg.SaveCredentials != nil {
		d.methods[protocol.MethodRotateCredentials] = d.rotateCredentials
		d.methods[protocol.MethodRenewCertificate] = d.renewCertificate
		d.methods[protocol.MethodInstallCertificate] = d.installCertificate
	}
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
