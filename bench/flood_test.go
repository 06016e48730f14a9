package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

var (
	floodGood    = config.EnvInt("FLEETFLOW_BENCH_FLOOD_GOOD", 300)  // good devices, connected once alone and once during the flood
	floodClients = config.EnvInt("FLEETFLOW_BENCH_FLOOD_CLIENTS", 3) // flooding addresses (127.0.0.2, .3, …)
	floodConns   = config.EnvInt("FLEETFLOW_BENCH_FLOOD_CONNS", 32)  // concurrent CONNECTs per flooding address
	// floodRate caps the whole flood, in CONNECTs per second (0: as fast as the flooders go). The flooders
	// share the machine's cores with the gateway, so an uncapped flood measures mostly the CPU they take.
	floodRate = config.EnvInt("FLEETFLOW_BENCH_FLOOD_RATE", 3000)
)

// BenchmarkConnectFlood measures good devices' CONNECT-to-CONNACK latency alone and while several clients
// flood the gateway with CONNECTs of unknown ids and of real ids with wrong secrets (docs/architecture.md,
// "Abuse: floods of CONNECTs"), with the gateway's defences on and, for comparison, off. The gateway runs in
// this process against a real registry (Postgres); the good devices connect from 127.0.0.1 and each
// flooding client from an address of its own (127.0.0.2, …), as distinct hosts would.
func BenchmarkConnectFlood(b *testing.B) {
	ctx := context.Background()
	reg, err := registry.Open(ctx, testenv.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(reg.Close)
	// Two sets of good devices: the first connects alone (then again, from the cache), the second during
	// the flood, so both measure first connects (a registry lookup) and reconnects alike.
	secret := func(id string) string { return "secret-of-" + id }
	var ids []string
	for i := range 2 * floodGood {
		ids = append(ids, fmt.Sprintf("good-%05d", i))
	}
	i := 0
	if _, err := reg.StageRows(ctx, "provision-flood", "provision", func() (registry.StagedRow, bool, error) {
		if i == len(ids) {
			return registry.StagedRow{}, false, nil
		}
		i++
		return registry.StagedRow{Seq: int64(i - 1), Line: int64(i), ID: ids[i-1], Tags: "{}", SecretHash: creds.Digest(secret(ids[i-1]))}, true, nil
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := reg.ProvisionBatch(ctx, "provision-flood", 0, int64(len(ids)), 0); err != nil {
		b.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		cfg  gateway.Config
	}{
		{"defended", gateway.Config{}},
		{"undefended", gateway.Config{AuthFailRate: -1, AuthNegativeTTL: -1, AuthColdConcurrency: 16}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			port, err := stack.FreePort()
			if err != nil {
				b.Fatal(err)
			}
			cfg := tc.cfg
			cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
			gw := gateway.New(cfg, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := gw.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer gw.Close()
			addr := gw.Addr()

			measure := func(set []string) []time.Duration {
				var mu sync.Mutex
				var lat []time.Duration
				work := make(chan string)
				var wg sync.WaitGroup
				for range 4 { // a few devices at a time, as a fleet reconnecting at its own pace
					wg.Add(1)
					go func() {
						defer wg.Done()
						for id := range work {
							d, rc, err := mqttConnect(addr, "127.0.0.1", id, secret(id))
							if err != nil || rc != 0 {
								b.Errorf("good device %s: rc %d, %v", id, rc, err)
								continue
							}
							mu.Lock()
							lat = append(lat, d)
							mu.Unlock()
						}
					}()
				}
				for _, id := range set {
					work <- id
				}
				close(work)
				wg.Wait()
				return lat
			}
			b.ResetTimer()
			alone := append(measure(ids[:floodGood]), measure(ids[:floodGood])...)

			// The flood: every client alternates unknown ids and wrong secrets for real ids.
			stop := make(chan struct{})
			var tokens chan struct{} // nil: no cap
			if floodRate > 0 {
				tokens = make(chan struct{}, floodRate)
				go func() {
					tick := time.NewTicker(10 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tick.C:
							for range max(1, floodRate/100) {
								select {
								case tokens <- struct{}{}:
								default:
								}
							}
						}
					}
				}()
			}
			var sent, refused atomic.Int64
			var fwg sync.WaitGroup
			for c := range floodClients {
				src := fmt.Sprintf("127.0.0.%d", 2+c)
				for k := range floodConns {
					fwg.Add(1)
					go func() {
						defer fwg.Done()
						for n := 0; ; n++ {
							if tokens != nil {
								select {
								case <-stop:
									return
								case <-tokens:
								}
							}
							select {
							case <-stop:
								return
							default:
							}
							// Unknown ids from a set of 1,000 (a misconfigured fleet, or an attacker's list).
							id, pw := fmt.Sprintf("ghost-%04d", (c*floodConns+k+n*97)%1000), "x"
							if n%2 == 1 {
								id, pw = ids[(k*7919+n)%len(ids)], "wrong"
							}
							_, rc, err := mqttConnect(addr, src, id, pw)
							sent.Add(1)
							if err == nil && rc != 0 {
								refused.Add(1)
							}
						}
					}()
				}
			}
			floodStart := time.Now()
			time.Sleep(time.Second) // let the flood reach its pace
			during := append(measure(ids[floodGood:]), measure(ids[:floodGood])...)
			floodFor := time.Since(floodStart)
			close(stop)
			fwg.Wait()
			b.StopTimer()

			st := gw.Stats()
			p := func(l []time.Duration, q float64) float64 {
				return float64(percentile(l, q)) / float64(time.Millisecond)
			}
			fmt.Printf("%s: %d good CONNECTs alone and %d during a flood of %d CONNECTs (%.0f/s; %d refused) from %d addresses × %d connections\n",
				tc.name, len(alone), len(during), sent.Load(), float64(sent.Load())/floodFor.Seconds(), refused.Load(), floodClients, floodConns)
			report(b, "good connect p50 alone", p(alone, 0.50), "ms-p50-alone")
			report(b, "good connect p99 alone", p(alone, 0.99), "ms-p99-alone")
			report(b, "good connect p50 during the flood", p(during, 0.50), "ms-p50-flood")
			report(b, "good connect p99 during the flood", p(during, 0.99), "ms-p99-flood")
			report(b, "flood CONNECTs per second", float64(sent.Load())/floodFor.Seconds(), "flood-connects/s")
			report(b, "refused without a lookup (per-address limit)", float64(st.AuthRateLimited), "rate-limited")
			report(b, "refused from the negative cache", float64(st.AuthNegativeHits), "negative-hits")
			report(b, "registry lookups", float64(st.AuthLookups), "lookups")
		})
	}
}

// percentile returns the q-quantile of l (nearest rank).
func percentile(l []time.Duration, q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// mqttConnect opens a TCP connection from src to addr, sends an MQTT 3.1.1 CONNECT (clean session, username
// = client id) and returns the time until the CONNACK and its return code; it then disconnects. A bare
// client keeps the flood's own cost low, so that what is measured is the gateway.
func mqttConnect(addr, src, id, password string) (time.Duration, byte, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	start := time.Now()
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	var body []byte
	body = str(body, "MQTT")
	body = append(body, 4, 0xC2, 0, 60) // level 4; username, password, clean session; keep-alive 60 s
	body = str(body, id)
	body = str(body, id)
	body = str(body, password)
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	pkt = append(pkt, body...)
	if _, err := c.Write(pkt); err != nil {
		return 0, 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, 0, err
	}
	took := time.Since(start)
	if ack[0] != 0x20 {
		return took, 0, fmt.Errorf("expected CONNACK, got packet type %#x", ack[0])
	}
	if ack[3] == 0 {
		_, _ = c.Write([]byte{0xE0, 0}) // DISCONNECT
	}
	return took, ack[3], nil
}
