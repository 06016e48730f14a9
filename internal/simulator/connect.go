package simulator

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/pki"
)

// connectAll connects every device with bounded concurrency and an optional rate.
func (s *Simulator) connectAll(ctx context.Context) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(s.cfg.Concurrency, len(s.creds)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				s.connectOne(ctx, i)
			}
		}()
	}
	var tick <-chan time.Time
	if s.cfg.ConnectRate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / s.cfg.ConnectRate))
		defer t.Stop()
		tick = t.C
	}
feed:
	for i := range s.creds {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				break feed
			}
		}
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
}

func (s *Simulator) connectOne(ctx context.Context, i int) {
	c := s.creds[i]
	sd := &simDevice{id: c.ID, started: time.Now()}
	cfg := device.Config{
		BrokerURLs:           brokersFor(s.brokers, i),
		TLS:                  s.tls,
		ID:                   c.ID,
		Secret:               c.Secret,
		Secret2:              c.Secret2,
		Slot:                 c.Slot,
		ClientCertificate:    c.TLS, // from a credentials file of provision --auth x509
		ClientCertificate2:   c.TLS2,
		PendingKey:           c.Pending, // a renewal's key stored before a restart
		KeepAlive:            s.cfg.KeepAlive,
		PingTimeout:          s.cfg.PingTimeout,
		RequestTimeout:       s.cfg.RequestTimeout,
		MaxReconnectInterval: s.cfg.MaxReconnectInterval,
		ReconnectJitter:      s.cfg.ReconnectJitter,
		Logger:               s.cfg.Logger,
		OnBusy:               func() { s.busy.Add(1) },
		OnConnectionLost:     s.countLost,
		OnConnected: func(int64, error) {
			if sd.conns.Add(1) > 1 {
				s.reconnects.Add(1)
			}
		},
	}
	if s.journal != nil {
		lastPending := c.Pending // a new pending key is a renewal's request, not a credential stored
		cfg.SaveCredentials = func(_ context.Context, dc device.Credentials) error {
			// Appended and synced before the device answers; a later run reads the id's last line.
			line := creds.Credential{ID: c.ID, Secret: dc.Secret, Secret2: dc.Secret2, Slot: dc.Slot, Line: c.Line}
			// Renewed certificates are kept with their keys, which only this file and the device ever hold
			// (docs/architecture.md, "Certificate renewal").
			for _, p := range []struct {
				pair      *tls.Certificate
				cert, key *string
			}{{dc.Cert, &line.Cert, &line.Key}, {dc.Cert2, &line.Cert2, &line.Key2}} {
				if p.pair == nil {
					continue
				}
				cert, key, err := pki.EncodeKeyPair(p.pair)
				if err != nil {
					return err
				}
				*p.cert, *p.key = string(cert), string(key)
			}
			// The pending key of a renewal goes to the same file before the request is answered; the next line
			// (the certificate installed, or a newer request) drops it.
			if dc.PendingKey != nil {
				key, err := pki.EncodePrivateKey(dc.PendingKey)
				if err != nil {
					return err
				}
				line.PendingKey = string(key)
			}
			err := s.journal.Append(line)
			if err == nil && (dc.PendingKey == nil || dc.PendingKey == lastPending) {
				s.rotations.Add(1)
			}
			if err == nil {
				lastPending = dc.PendingKey
			}
			return err
		}
	}
	if n := len(s.cfg.LocalAddrs); n > 0 {
		cfg.Dialer = &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(s.cfg.LocalAddrs[i%n])}}
	}
	var err error
	busy := 0 // consecutive busy refusals: retried without counting as attempts, after a growing random wait
	for attempt := 0; attempt < s.cfg.ConnectAttempts; attempt++ {
		if attempt > 0 || busy > 0 {
			wait := time.Duration(500+rand.IntN(1000)) * time.Millisecond
			if busy > 0 {
				// Full jitter over a bound that doubles per refusal (as the device's reconnects do).
				wait = rand.N(min(s.maxReconnect(), time.Second<<min(busy-1, 10)))
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				s.failed.Add(1)
				return
			}
		}
		var d *device.Device
		d, err = device.New(cfg)
		if err != nil {
			break
		}
		s.register(d, sd)
		err = d.Connect(ctx)
		if err == nil {
			sd.dev = d
			break
		}
		d.Close()
		sd.abandonUpdate()
		if errors.Is(err, device.ErrNotAuthorized) || ctx.Err() != nil {
			break
		}
		if errors.Is(err, device.ErrServerBusy) {
			busy++
			attempt--
			continue
		}
		busy = 0
	}
	switch {
	case err == nil:
	case errors.Is(err, device.ErrNotAuthorized):
		s.refused.Add(1)
		s.log.Debug("device refused", "device", c.ID)
		return
	default:
		s.failed.Add(1)
		s.log.Debug("device failed to connect", "device", c.ID, "err", err)
		return
	}
	// Normally the first twin/get already initialised the device (in its desired handler); this covers
	// the rare case where a newer desired patch overtook that document.
	reported, _ := sd.dev.Reported()
	s.initDevice(sd, reported)
	s.mu.Lock()
	s.devices = append(s.devices, sd)
	s.mu.Unlock()

	select {
	case s.reportSlots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	s.reports.Add(1)
	go func() {
		defer func() { <-s.reportSlots; s.reports.Done() }()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s.reportCapabilities(rctx, sd, sd.dev); err != nil {
			s.reportFailed.Add(1)
			s.log.Debug("capability report failed", "device", c.ID, "err", err)
			return
		}
		s.reported.Add(1)
	}()
}

// maxReconnect is the devices' reconnect backoff cap, which also caps the wait after a busy refusal.
func (s *Simulator) maxReconnect() time.Duration {
	if s.cfg.MaxReconnectInterval > 0 {
		return s.cfg.MaxReconnectInterval
	}
	return 30 * time.Second
}

// register installs the simulated behaviour: methods and the desired-state handler (behaviour.go).
func (s *Simulator) register(d *device.Device, sd *simDevice) {
	sd.current.Store(d)
	id := d.ID()
	// Only the model: the closure below would keep the whole capabilities document of every device.
	model := Capabilities(id, s.cfg.Seed)["model"]
	d.OnMethod("ping", func(ctx context.Context, payload []byte) (any, error) {
		s.methods.Add(1)
		return map[string]any{"pong": true, "device": id, "time": time.Now().UTC().Format(time.RFC3339Nano)}, nil
	})
	d.OnMethod("diagnostics", func(ctx context.Context, payload []byte) (any, error) {
		s.methods.Add(1)
		version, health := sd.firmware()
		return map[string]any{
			"device":        id,
			"model":         model,
			"firmware":      map[string]any{"version": version},
			"health":        health,
			"uptimeSeconds": int64(time.Since(sd.started).Seconds()),
			"connections":   sd.conns.Load(),
			"session":       d.Session(),
			"telemetrySent": sd.seq.Load(),
			"goVersion":     runtime.Version(),
		}, nil
	})
	d.OnMethod("reboot", func(ctx context.Context, payload []byte) (any, error) {
		// Acknowledged only: a simulated reboot would just be a reconnect, which Kick already tests.
		s.methods.Add(1)
		return map[string]any{"rebooting": true}, nil
	})
	d.OnMethod("factoryReset", func(ctx context.Context, payload []byte) (any, error) {
		// What a decommission with --wipe sends before the credentials are revoked; a real device would
		// erase its data and keys here.
		s.methods.Add(1)
		return map[string]any{"wiped": true, "device": id}, nil
	})
	d.OnDesired(func(u device.DesiredUpdate) { s.onDesired(sd, d, u) })
}

// closeAll disconnects every device with bounded parallelism.
func (s *Simulator) closeAll() {
	s.mu.Lock()
	devs := s.devices
	s.devices = nil
	s.mu.Unlock()
	sem := make(chan struct{}, max(s.cfg.Concurrency, 64))
	var wg sync.WaitGroup
	for _, sd := range devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sd.dev.Close()
		}()
	}
	wg.Wait()
}

// countLost counts a lost connection by its cause (Stats.LostPing, LostClosed, LostOther).
func (s *Simulator) countLost(err error) {
	switch {
	case err == nil:
		s.lostOther.Add(1)
	case strings.Contains(err.Error(), "pingresp not received"):
		s.lostPing.Add(1)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		s.lostClosed.Add(1)
	default:
		s.lostOther.Add(1)
	}
}
