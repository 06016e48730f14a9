// Package simulator runs many devices (internal/device) in one process against a fleetflow gateway, so that
// provisioning, twins, methods and rollouts can be exercised at fleet scale on one machine.
//
// Each device reports its capabilities once after its first connect; the values are derived from the device
// id and the seed (Capabilities), so a test or an operator can predict exactly what the registry must hold.
// Connections are opened by a bounded pool of workers (and an optional rate), because 10,000 unbounded
// CONNECTs would only turn into timeouts. Telemetry is driven by one scheduler for all devices instead of a
// timer goroutine per device, to keep a simulated device within ~64 KiB.
//
// The devices behave as the device contract (docs/architecture.md, "The device protocol") expects of real
// ones, so that jobs and rollouts can be exercised end to end:
//
//   - Desired state is acknowledged: the top-level desired keys whose values differ from what the device
//     reported last are reported back in one patch (deleted keys as null); desired.telemetryInterval
//     (seconds) also sets the device's telemetry period, as far as the shared scheduler allows.
//   - desired.firmware = {jobId, version, url, sha256} is a firmware update: the device reports progress on
//     jobs/{jobId}/status (downloading, installing, rebooting; each step takes Config.FirmwareStepDelay),
//     then reported.firmware.version and reported.health, then succeeded. Config.FailInstall and
//     Config.Unhealthy make chosen fractions of the fleet fail the install or report failing health after it
//     (InstallFails, TurnsUnhealthy), deterministically, so tests know which devices will.
//   - The firmware version and health survive a restart of the simulator: they are taken from the reported
//     document the registry returns on connect, and a pending update (a device that was offline when the
//     rollout reached it) is performed then.
package simulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// Config describes a simulation.
type Config struct {
	// BrokerURL is the gateway, tcp:// or, for TLS, ssl:// (also tls://, mqtts://).
	BrokerURL string
	// BrokerURLs are further gateways of the fleet (after BrokerURL, which may then be empty). Devices are
	// spread over all of them round-robin, and each device fails over to the others (spread.go).
	BrokerURLs []string
	// CAFile is the CA the gateway's certificate must chain to on a TLS BrokerURL (empty: the system's
	// roots); it is read once and its TLS configuration shared by every device and connection
	// (device.TLSClient).
	CAFile string
	Creds  []creds.Credential
	// CredentialsFile is the file Creds were read from. The devices' new secrets from credential rotations,
	// and their renewed certificates with the keys they generated, are appended to it, each synced before
	// the device acknowledges (docs/architecture.md, "Credential rotation", "Certificate renewal"); empty, the
	// devices refuse rotations (they have nowhere to keep a new credential).
	CredentialsFile string
	// Devices limits the simulation to the first n credentials (0 = all).
	Devices int
	// Concurrency is the number of CONNECTs in flight (default 64); ConnectRate caps CONNECTs per second
	// (0 = no cap).
	Concurrency int
	ConnectRate float64
	// TelemetryEvery is each device's telemetry period (0 = no telemetry).
	TelemetryEvery time.Duration
	// Seed varies the derived capabilities; the same seed and id always give the same values.
	Seed int64
	// ConnectAttempts is how often a device retries a CONNECT that failed for a reason other than a
	// refusal (default 3).
	ConnectAttempts int
	// LocalAddrs, if set, are source IPs (e.g. 127.0.0.2, 127.0.0.3) used round-robin, since one source
	// address has only ~28k ephemeral ports towards one broker.
	LocalAddrs []string
	// KeepAlive, PingTimeout, RequestTimeout and MaxReconnectInterval are passed to every device (device
	// defaults if 0).
	KeepAlive            time.Duration
	PingTimeout          time.Duration
	RequestTimeout       time.Duration
	MaxReconnectInterval time.Duration
	// ReconnectJitter is passed to every device: the random wait before each reconnect attempt.
	ReconnectJitter time.Duration
	Logger          *slog.Logger

	// FirmwareStepDelay is how long each step of a firmware update (download, install, reboot) takes;
	// 0 runs an update without sleeping.
	FirmwareStepDelay time.Duration
	// FailInstall makes a fraction of the devices fail to install a version (version → fraction 0..1):
	// they report the job failed and keep running their old version.
	FailInstall VersionFractions
	// Unhealthy makes a fraction of the devices that updated to a version report failing health after
	// the reboot (version → fraction 0..1).
	Unhealthy VersionFractions
}

// Stats are the simulation's counters.
type Stats struct {
	Devices         int64 // devices in the simulation
	Connected       int64 // connected now
	Refused         int64 // devices whose CONNECT was refused (unknown, disabled, wrong secret)
	Failed          int64 // devices that could not connect or sync for another reason
	Reported        int64 // devices whose capabilities were acknowledged
	ReportFailed    int64 // capability reports that failed
	Reconnects      int64 // reconnects after a lost connection
	Telemetry       int64 // telemetry messages sent
	Methods         int64 // method calls answered
	Rotations       int64 // new secrets stored (credential rotations acknowledged)
	DesiredUpdates  int64 // desired updates received
	DesiredAcks     int64 // reported patches acknowledging desired changes (or correcting firmware/health)
	FirmwareUpdates int64 // firmware updates installed (the device switched version)
	FirmwareFailed  int64 // firmware updates that failed to install
	Busy            int64 // CONNECTs a gateway refused as busy (each device retries them after a random wait)
	// LostPing, LostClosed and LostOther count lost connections by cause: no PINGRESP in time (the gateway,
	// or this process, starved of CPU), closed by the gateway (a kick, a takeover, a gateway going away),
	// and anything else. Printed only when some were lost.
	LostPing, LostClosed, LostOther int64

	// ByBroker counts the connected devices by gateway URL, when the simulation has several gateways.
	ByBroker map[string]int64 `json:",omitempty"`
}

// String is the one-line status the CLI prints.
func (s Stats) String() string {
	line := fmt.Sprintf("devices=%d connected=%d refused=%d failed=%d reported=%d report_failed=%d reconnects=%d telemetry=%d methods=%d rotations=%d desired=%d acks=%d firmware_updates=%d firmware_failed=%d busy=%d",
		s.Devices, s.Connected, s.Refused, s.Failed, s.Reported, s.ReportFailed, s.Reconnects, s.Telemetry, s.Methods, s.Rotations,
		s.DesiredUpdates, s.DesiredAcks, s.FirmwareUpdates, s.FirmwareFailed, s.Busy)
	if s.LostPing+s.LostClosed+s.LostOther > 0 {
		line += fmt.Sprintf(" lost_ping=%d lost_closed=%d lost_other=%d", s.LostPing, s.LostClosed, s.LostOther)
	}
	if len(s.ByBroker) > 0 {
		line += " by_gateway[" + formatPerBroker(s.ByBroker) + "]"
	}
	return line
}

// Simulator runs one simulation.
type Simulator struct {
	cfg     Config
	brokers []string          // BrokerURL and BrokerURLs
	tls     *device.TLSClient // shared by every device; nil for a plaintext broker URL
	log     *slog.Logger
	creds   []creds.Credential

	mu      sync.Mutex
	devices []*simDevice // connected at least once, in connect order

	refused, failed, reported, reportFailed, reconnects, telemetry, methods, desired atomic.Int64
	acks, firmwareUpdates, firmwareFailed, busy, rotations                           atomic.Int64
	lostPing, lostClosed, lostOther                                                  atomic.Int64
	journal                                                                          *creds.Journal // nil without Config.CredentialsFile

	// runCtx ends when Run's context does; background work of the devices (acknowledgements, firmware
	// updates) runs under it and is tracked by bg, so that Run returns only after it stopped.
	runCtx context.Context
	bgMu   sync.Mutex
	bg     sync.WaitGroup
	bgDone bool

	// reports tracks the capability reports that run after each connect; reportSlots bounds them, so
	// connecting goes on at full speed while earlier devices wait for their report's acknowledgement.
	reports     sync.WaitGroup
	reportSlots chan struct{}
}

type simDevice struct {
	dev      *device.Device
	id       string
	started  time.Time
	seq      atomic.Int64                  // telemetry sequence
	conns    atomic.Int64                  // connections so far
	current  atomic.Pointer[device.Device] // the device of the latest connection attempt
	interval atomic.Int64                  // desired telemetryInterval in ns; 0 = the simulation's period
	lastSent atomic.Int64                  // unix ns of the last telemetry message

	// reportMu serialises the device's reported patches. Each patch is computed from the device's state
	// while holding it, so whatever order they run in, the last one written says what the device is.
	reportMu sync.Mutex

	mu          sync.Mutex
	initialized bool            // version, health and reported come from the registry's twin
	version     string          // running firmware
	health      map[string]any  // {"status": "ok"} or {"status": "failing", "reason": …}
	reported    map[string]any  // the reported document, as far as the device knows
	desired     map[string]any  // the latest desired document
	acked       map[string]bool // desired keys the device mirrored into reported
	deleted     map[string]bool // desired keys deleted by a patch, to be reported as null
	capsSent    bool            // the capabilities report was attempted
	jobsDone    map[string]bool // firmware jobs whose final status was delivered
	update      *firmwareUpdate // the update in progress, if any
}

// New validates cfg.
func New(cfg Config) (*Simulator, error) {
	brokers := cfg.brokers()
	if len(brokers) == 0 {
		return nil, errors.New("simulator: broker URL is required")
	}
	// The devices share one TLS configuration, made below for BrokerURL: from here on, the list's first
	// TLS URL, or its first URL when none is TLS.
	cfg.BrokerURL = brokers[max(0, slices.IndexFunc(brokers, pki.IsTLSURL))]
	list := cfg.Creds
	if cfg.Devices > 0 && cfg.Devices < len(list) {
		list = list[:cfg.Devices]
	}
	if len(list) == 0 {
		return nil, errors.New("simulator: no credentials")
	}
	tlsCfg, err := pki.ClientConfigFor(cfg.BrokerURL, cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	for _, c := range list {
		if tlsCfg == nil && c.Secret == "" && c.Secret2 == "" {
			return nil, fmt.Errorf("simulator: %s has a client certificate, which is presented over TLS only: give a TLS broker URL (ssl://…:8883)", c.ID)
		}
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.ConnectAttempts <= 0 {
		cfg.ConnectAttempts = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FirmwareStepDelay < 0 {
		return nil, errors.New("simulator: negative firmware step delay")
	}
	if err := cfg.FailInstall.validate("fail-install"); err != nil {
		return nil, err
	}
	if err := cfg.Unhealthy.validate("unhealthy"); err != nil {
		return nil, err
	}
	sim := &Simulator{cfg: cfg, brokers: brokers, log: cfg.Logger.With("component", "simulator"), creds: list,
		reportSlots: make(chan struct{}, 4*cfg.Concurrency), runCtx: context.Background()}
	if tlsCfg != nil {
		sim.tls = device.NewTLSClient(tlsCfg)
	}
	if cfg.CredentialsFile != "" {
		if sim.journal, err = creds.OpenJournal(cfg.CredentialsFile); err != nil {
			return nil, fmt.Errorf("simulator: %w", err)
		}
	}
	return sim, nil
}

// Run connects every device, then keeps them running (telemetry, methods, reconnects) until ctx ends, and
// disconnects them. It returns the final counters.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	s, err := New(cfg)
	if err != nil {
		return Stats{}, err
	}
	err = s.Run(ctx)
	return s.Stats(), err
}

// Stats returns the current counters; safe to call while Run is running.
func (s *Simulator) Stats() Stats {
	// Counted rather than tracked, because paho reports lost connections but not clean disconnects.
	s.mu.Lock()
	devs := s.devices
	s.mu.Unlock()
	by := perBroker(devs)
	var connected int64
	for _, n := range by {
		connected += n
	}
	if len(s.brokers) < 2 {
		by = nil
	}
	return Stats{
		ByBroker:        by,
		Devices:         int64(len(s.creds)),
		Connected:       connected,
		Refused:         s.refused.Load(),
		Failed:          s.failed.Load(),
		Reported:        s.reported.Load(),
		ReportFailed:    s.reportFailed.Load(),
		Reconnects:      s.reconnects.Load(),
		Telemetry:       s.telemetry.Load(),
		Methods:         s.methods.Load(),
		Rotations:       s.rotations.Load(),
		DesiredUpdates:  s.desired.Load(),
		DesiredAcks:     s.acks.Load(),
		FirmwareUpdates: s.firmwareUpdates.Load(),
		FirmwareFailed:  s.firmwareFailed.Load(),
		Busy:            s.busy.Load(),
		LostPing:        s.lostPing.Load(),
		LostClosed:      s.lostClosed.Load(),
		LostOther:       s.lostOther.Load(),
	}
}

// Run is the method form of the package-level Run.
func (s *Simulator) Run(ctx context.Context) error {
	start := time.Now()
	s.runCtx = ctx
	s.connectAll(ctx)
	s.log.Info("initial connects done", "elapsed", time.Since(start).Round(time.Millisecond), "stats", s.Stats().String())
	s.reports.Wait()
	s.log.Info("capabilities reported", "elapsed", time.Since(start).Round(time.Millisecond), "stats", s.Stats().String())

	var wg sync.WaitGroup
	if s.cfg.TelemetryEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.telemetryLoop(ctx)
		}()
	}
	<-ctx.Done()
	wg.Wait()
	s.stopBackground()
	s.closeAll()
	if s.journal != nil {
		if err := s.journal.Close(); err != nil {
			return fmt.Errorf("simulator: %w", err)
		}
	}
	return nil
}

// goBackground runs fn as device background work under runCtx, unless Run is already shutting down (then it
// reports false).
func (s *Simulator) goBackground(fn func(ctx context.Context)) bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgDone {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		fn(s.runCtx)
	}()
	return true
}

// stopBackground refuses new background work and waits for what runs; runCtx has ended, so it stops soon.
func (s *Simulator) stopBackground() {
	s.bgMu.Lock()
	s.bgDone = true
	s.bgMu.Unlock()
	s.bg.Wait()
}
