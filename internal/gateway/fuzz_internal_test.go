package gateway

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// checkingStore is minimalStore recording what reaches the registry, so the fuzz target can tell a payload
// that was written from one that was dropped.
type checkingStore struct {
	minimalStore
	mu       sync.Mutex
	reported [][]byte
	statuses []fleet.JobStatus
}

func (s *checkingStore) ApplyReported(_ context.Context, p []fleet.ReportedPatch) ([]fleet.ReportedResult, error) {
	s.mu.Lock()
	for _, r := range p {
		s.reported = append(s.reported, r.Patch)
	}
	s.mu.Unlock()
	return make([]fleet.ReportedResult, len(p)), nil
}

func (s *checkingStore) RecordJobStatuses(_ context.Context, st []fleet.JobStatus) error {
	s.mu.Lock()
	s.statuses = append(s.statuses, st...)
	s.mu.Unlock()
	return nil
}

// take returns and forgets what the store received.
func (s *checkingStore) take() ([][]byte, []fleet.JobStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, st := s.reported, s.statuses
	s.reported, s.statuses = nil, nil
	return r, st
}

// answeringBus is a Downlinks that records the method answers the gateway relays.
type answeringBus struct {
	mu      sync.Mutex
	answers [][]byte
}

func (*answeringBus) Attach(string) error      { return nil }
func (*answeringBus) Detach(string) error      { return nil }
func (*answeringBus) Kick(string, int64) error { return nil }
func (b *answeringBus) Respond(_ protocol.Downlink, _ int, body []byte) error {
	b.mu.Lock()
	b.answers = append(b.answers, append([]byte(nil), body...))
	b.mu.Unlock()
	return nil
}
func (*answeringBus) Run(ctx context.Context, _ func(protocol.Downlink)) { <-ctx.Done() }

func (b *answeringBus) take() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.answers
	b.answers = nil
	return a
}

// The kinds of message FuzzDevicePayload sends.
const (
	fuzzReported = iota
	fuzzJobStatus
	fuzzMethodResponse
	fuzzAnyTopic
	fuzzKinds
)

// FuzzDevicePayload feeds arbitrary device messages (a reported patch, a job status, a method response, or
// any topic under the device's own prefix) through the gateway's inline subscriber, as mochi delivers them
// from a connected device, and follows each to where it ends: a valid reported patch or job status reaches
// the registry byte for byte, an invalid one is counted as malformed and reaches nothing; a method answer is
// relayed to its caller as the device sent it; a topic outside the contract is counted and dropped. The
// gateway never panics.
func FuzzDevicePayload(f *testing.F) {
	f.Add(uint8(fuzzReported), "r1", []byte(`{"temp":21.5,"fw":{"version":"1.2"}}`))
	f.Add(uint8(fuzzReported), "r2", []byte(`{"a":null}`))
	f.Add(uint8(fuzzReported), "r3", []byte(`[1]`))
	f.Add(uint8(fuzzReported), "r4", []byte("{\"a\":\"\xff\"}"))
	f.Add(uint8(fuzzReported), "r/5", []byte(`{}`))
	f.Add(uint8(fuzzJobStatus), "job-1", []byte(`{"status":"installing","progress":40}`))
	f.Add(uint8(fuzzJobStatus), "job-1", []byte(`{"status":"bricked"}`))
	f.Add(uint8(fuzzJobStatus), "#", []byte(`{"status":"failed"}`))
	f.Add(uint8(fuzzMethodResponse), "200", []byte(`{"ok":true}`))
	f.Add(uint8(fuzzMethodResponse), "500", []byte("not json \x00"))
	f.Add(uint8(fuzzMethodResponse), "2000", []byte(`{}`))
	f.Add(uint8(fuzzAnyTopic), "twin/res/200/x", []byte(`{}`))
	f.Add(uint8(fuzzAnyTopic), "telemetry/a/b", []byte(`anything`))
	f.Add(uint8(fuzzAnyTopic), "methods/req/m/r", []byte(`{}`))

	store := &checkingStore{}
	bus := &answeringBus{}
	// One patch or status per batch, written at once: each message's fate is known before the next.
	g := New(Config{Listen: "127.0.0.1:0", Downlinks: bus, ReportedBatch: 1, ReportedWait: time.Microsecond},
		store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := g.Start(context.Background()); err != nil {
		f.Fatalf("start gateway: %v", err)
	}
	f.Cleanup(func() { g.Close() })
	const id = "dev-a"
	g.sessions.add(&session{id: id, cl: &mqtt.Client{}, num: 1})

	f.Fuzz(func(t *testing.T, kind uint8, part string, payload []byte) {
		var topic string
		rid := ""
		switch kind % fuzzKinds {
		case fuzzReported:
			topic = "devices/" + id + "/twin/reported/" + part
		case fuzzJobStatus:
			topic = "devices/" + id + "/jobs/" + part + "/status"
		case fuzzMethodResponse:
			rid = g.methods.add(protocol.Downlink{Device: id, Kind: protocol.SubjectMethod, Method: "m", Reply: "r", Timeout: time.Minute})
			topic = "devices/" + id + "/methods/res/" + part + "/" + rid
		default:
			topic = "devices/" + id + "/" + part
		}
		before := g.Stats()
		g.onMessage(nil, packets.Subscription{}, packets.Packet{Origin: id, TopicName: topic, Payload: payload})

		parsed, err := protocol.Parse(topic)
		fromDevice := err == nil && parsed.Kind.FromDevice() && parsed.Device == id
		switch {
		case !fromDevice:
			if d := g.Stats().Malformed - before.Malformed; d != 1 {
				t.Fatalf("%q: malformed counted %d times, want once", topic, d)
			}
		case parsed.Kind == protocol.KindTwinReported:
			_, perr := twin.ParseObject(twin.Reported, payload)
			valid := len(payload) <= twin.MaxReportedBytes && perr == nil
			after := waitStats(t, g, func(s Stats) bool {
				return s.ReportedApplied+s.ReportedFailed > before.ReportedApplied+before.ReportedFailed
			})
			got, _ := store.take()
			if valid {
				if after.ReportedApplied != before.ReportedApplied+1 || len(got) != 1 || string(got[0]) != string(payload) {
					t.Fatalf("valid patch %q: applied %d→%d, registry got %q", payload, before.ReportedApplied, after.ReportedApplied, got)
				}
			} else if after.Malformed != before.Malformed+1 || after.ReportedFailed != before.ReportedFailed+1 || len(got) != 0 {
				t.Fatalf("invalid patch %q (%v): malformed %d→%d, registry got %q", payload, perr, before.Malformed, after.Malformed, got)
			}
		case parsed.Kind == protocol.KindJobStatus:
			want, perr := protocol.ParseJobProgress(payload)
			after := waitStats(t, g, func(s Stats) bool {
				return s.JobStatus+s.Malformed > before.JobStatus+before.Malformed
			})
			_, got := store.take()
			if perr == nil {
				if after.JobStatus != before.JobStatus+1 || len(got) != 1 || got[0].JobID != parsed.JobID ||
					got[0].Status != want.Status || got[0].Progress != want.Progress || got[0].Reason != want.Reason {
					t.Fatalf("valid status %q: recorded %d→%d, registry got %+v", payload, before.JobStatus, after.JobStatus, got)
				}
			} else if after.Malformed != before.Malformed+1 || len(got) != 0 {
				t.Fatalf("invalid status %q (%v): malformed %d→%d, registry got %+v", payload, perr, before.Malformed, after.Malformed, got)
			}
		case parsed.Kind == protocol.KindMethodResponse:
			got := bus.take()
			if parsed.RequestID == rid && (len(got) != 1 || string(got[0]) != string(payload)) {
				t.Fatalf("answer %q to a pending call: relayed %q", payload, got)
			}
			if parsed.RequestID != rid && len(got) != 0 {
				t.Fatalf("answer to unknown request %q relayed: %q", parsed.RequestID, got)
			}
		}
		if rid != "" {
			g.methods.take(rid, id) // unanswered: forget it, as its timeout would
		}
	})
}

// waitStats waits until the gateway's counters satisfy done (the batchers are asynchronous) and returns them.
func waitStats(t *testing.T, g *Gateway, done func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := g.Stats()
		if done(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway counters never moved: %+v", s)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// A status code outside 100..599 in a method response topic is no contract topic: counted, never relayed.
func TestMethodResponseWithBadStatusIsMalformed(t *testing.T) {
	bus := &answeringBus{}
	g := New(Config{Listen: "127.0.0.1:0", Downlinks: bus}, &checkingStore{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	g.sessions.add(&session{id: "dev-a", cl: &mqtt.Client{}, num: 1})
	rid := g.methods.add(protocol.Downlink{Device: "dev-a", Kind: protocol.SubjectMethod, Method: "m", Reply: "r", Timeout: time.Minute})
	for _, status := range []int{99, 600, 2000} {
		g.onMessage(nil, packets.Subscription{}, packets.Packet{Origin: "dev-a",
			TopicName: "devices/dev-a/methods/res/" + strconv.Itoa(status) + "/" + rid, Payload: []byte(`{}`)})
	}
	if m := g.Stats().Malformed; m != 3 {
		t.Fatalf("malformed = %d, want 3", m)
	}
	if a := bus.take(); len(a) != 0 {
		t.Fatalf("relayed %q", a)
	}
}
