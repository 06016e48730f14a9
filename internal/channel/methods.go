package channel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// The channel's vocabulary is the domain's (internal/fleet). These names are the channel's old ones.
//
// A call is a NATS request on the device's method subject (protocol.DeviceSubject, SubjectMethod) with the
// method name and the timeout in headers; the gateway holding the device relays it as
// devices/{id}/methods/req/{method}/{rid} with a request id of its own. Its payload is JSON of at most
// MaxMethodPayload bytes; an empty payload is sent as {}, because devices decode method payloads as JSON
// and an empty body is not valid JSON. A result's payload is the device's response body, kept as a JSON
// string when it is not JSON, so that a result can always be marshalled (Temporal payloads are JSON);
// calls that failed locally carry {"error": "..."}.

// Invoke calls one method and waits up to timeout (DefaultMethodTimeout when ≤ 0) for the answer. The
// error is non-nil only when the call could not be made or waited for: invalid call, payload over
// MaxMethodPayload, channel closed or disconnected, or ctx ended (then the result timed out). Device
// answers, offline devices and timeouts are outcomes, not errors.
func (c *Channel) Invoke(ctx context.Context, call fleet.MethodCall, timeout time.Duration) (fleet.MethodResult, error) {
	if err := validateCall(call); err != nil {
		return failedResult(call.DeviceID, fleet.StatusInvalid, err), fmt.Errorf("invoke %s on %s: %w", call.Method, call.DeviceID, err)
	}
	res, errs := c.invoke(ctx, []fleet.MethodCall{call}, timeout, 0)
	if errs[0] != nil {
		return res[0], fmt.Errorf("invoke %s on %s: %w", call.Method, call.DeviceID, errs[0])
	}
	if res[0].Outcome == fleet.MethodTimedOut && ctx.Err() != nil {
		return res[0], fmt.Errorf("invoke %s on %s: %w", call.Method, call.DeviceID, ctx.Err())
	}
	return res[0], nil
}

// InvokeMany sends all calls, in order and at most rate per second when rate > 0, waits up to timeout
// (DefaultMethodTimeout when ≤ 0) after each call's send for its response, and returns one result per call
// in input order (fleet.MethodOutcome): status 2xx succeeded, other device statuses failed (Status and
// Payload kept), NATS's "no responders" (no gateway holds the device) offline with the contract's offline
// answer (404, protocol.OfflinePayload), no answer timed out. Invalid
// calls fail with fleet.StatusInvalid and are not sent. When ctx ends or the channel closes, calls not yet
// sent fail with fleet.StatusNotSent and sent ones still unanswered time out; InvokeMany returns at once.
//
// A batch costs no goroutine per call: the calls are registered under one lock, and one goroutine
// publishes them asynchronously (within the channel's window, Config.MaxCallsInFlight) and waits; the
// answers come back through the channel's one inbox subscription.
func (c *Channel) InvokeMany(ctx context.Context, calls []fleet.MethodCall, timeout time.Duration, rate float64) []fleet.MethodResult {
	res, _ := c.invoke(ctx, calls, timeout, rate)
	return res
}

// pendingCall is a call waiting for its response.
type pendingCall struct {
	b        *batch
	idx      int
	deviceID string
	sentAt   atomic.Int64 // unix ns; 0 until sent
	slot     atomic.Bool  // holds a slot of the channel's window
}

// batch collects the results of one InvokeMany. The response handler and the sender both write results
// through deliver, which keeps the first outcome of each call and ignores everything after finish.
type batch struct {
	timeout time.Duration

	mu        sync.Mutex
	results   []fleet.MethodResult
	remaining int
	finished  bool
	done      chan struct{} // closed when remaining reaches 0
}

func (b *batch) deliver(i int, r fleet.MethodResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished || b.results[i].Outcome != "" {
		return
	}
	b.results[i] = r
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

// invoke is InvokeMany with, per call, the reason it could not be sent (for Invoke's error).
func (c *Channel) invoke(ctx context.Context, calls []fleet.MethodCall, timeout time.Duration, rate float64) ([]fleet.MethodResult, []error) {
	if timeout <= 0 {
		timeout = DefaultMethodTimeout
	}
	b := &batch{timeout: timeout, results: make([]fleet.MethodResult, len(calls)), done: make(chan struct{})}
	timeoutHeader := protocol.FormatTimeout(timeout)
	errs := make([]error, len(calls))
	entries := make([]pendingCall, len(calls))
	rids := make([]string, len(calls))
	payloads := make([][]byte, len(calls))
	for i, call := range calls {
		if err := validateCall(call); err != nil {
			b.results[i] = failedResult(call.DeviceID, fleet.StatusInvalid, err)
			errs[i] = err
			continue
		}
		b.remaining++
		entries[i] = pendingCall{b: b, idx: i, deviceID: call.DeviceID}
		rids[i] = strconv.FormatUint(c.ridSeq.Add(1), 36)
		payloads[i] = call.Payload
		if len(bytes.TrimSpace(call.Payload)) == 0 {
			payloads[i] = emptyPayload
		}
	}
	if b.remaining == 0 {
		return b.results, errs
	}
	// Register every call before sending any, so that no response can overtake its registration.
	c.mu.Lock()
	for i := range calls {
		if rids[i] != "" {
			c.pending[rids[i]] = &entries[i]
		}
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, rid := range rids {
			if rid != "" {
				delete(c.pending, rid)
			}
		}
		c.mu.Unlock()
	}()

	sd := sender{c: c, ctx: ctx, hold: slotHold, own: make([]*pendingCall, 0, b.remaining)}
	defer sd.stopTimers()
	defer sd.releaseAll()
	notSent := func(i int, err error) {
		errs[i] = err
		b.deliver(i, failedResult(calls[i].DeviceID, fleet.StatusNotSent, fmt.Errorf("not sent: %w", err)))
	}
	start := time.Now()
	var lastSent time.Time
	var stop error // once set, the remaining calls are not sent
	sent := 0
	for i, call := range calls {
		if rids[i] == "" {
			continue
		}
		if stop == nil {
			stop = ctx.Err()
		}
		if stop == nil && rate > 0 {
			stop = sd.pace(start.Add(time.Duration(float64(sent) / rate * float64(time.Second))))
		}
		if stop == nil {
			stop = sd.acquire()
		}
		if stop != nil {
			notSent(i, stop)
			continue
		}
		p := &entries[i]
		p.slot.Store(true)
		if err := c.usable(); err != nil {
			stop = err
			c.release(p)
			notSent(i, err)
			continue
		}
		msg := &nats.Msg{
			Subject: protocol.DeviceSubject(call.DeviceID, protocol.SubjectMethod),
			Reply:   c.inbox + "." + rids[i],
			Header: nats.Header{
				protocol.HeaderMethod:  []string{call.Method},
				protocol.HeaderTimeout: []string{timeoutHeader},
			},
			Data: payloads[i],
		}
		lastSent = time.Now()
		p.sentAt.Store(lastSent.UnixNano())
		sd.own = append(sd.own, p)
		if err := c.nc.PublishMsg(msg); err != nil {
			c.release(p)
			notSent(i, err)
			continue
		}
		c.stats.methodsSent.Add(1)
		sent++
	}
	if sent > 0 {
		sd.wait(b.done, lastSent.Add(timeout))
	}
	b.mu.Lock()
	b.finished = true
	for i := range b.results {
		if b.results[i].Outcome == "" {
			b.results[i] = fleet.MethodResult{DeviceID: calls[i].DeviceID, Outcome: fleet.MethodTimedOut}
		}
	}
	b.mu.Unlock()
	return b.results, errs
}

// slotHold is how long an unanswered call keeps its slot in the channel's window (Config.MaxCallsInFlight).
// The window exists to keep a fan-out from arriving at a gateway as one burst; an answer that has not come within slotHold comes from a slow or silent device, and such answers trickle
// in rather than burst. Without the release, a batch to silent devices would crawl at one window per
// timeout. It bounds the rate of calls to silent devices from below at MaxCallsInFlight/slotHold.
const slotHold = 100 * time.Millisecond

// sender is the sending side of one invoke: it paces, takes window slots, and releases the slots of its
// own calls that stay unanswered for longer than hold.
type sender struct {
	c     *Channel
	ctx   context.Context
	hold  time.Duration
	own   []*pendingCall // the calls sent so far, in send order (so in order of slot expiry)
	next  int            // own[:next] have had their slots released (or released them themselves)
	timer *time.Timer
}

// expire releases the slots of own calls unanswered for hold, and returns when the next one expires.
func (s *sender) expire() (time.Time, bool) {
	now := time.Now().UnixNano()
	for s.next < len(s.own) {
		p := s.own[s.next]
		due := p.sentAt.Load() + int64(s.hold)
		if !p.slot.Load() {
			s.next++
			continue
		}
		if due > now {
			return time.Unix(0, due), true
		}
		s.c.release(p)
		s.next++
	}
	return time.Time{}, false
}

func (s *sender) releaseAll() {
	for _, p := range s.own[s.next:] {
		s.c.release(p)
	}
	s.next = len(s.own)
}

// timerC arms the sender's timer for t.
func (s *sender) timerC(t time.Time) <-chan time.Time {
	d := max(time.Until(t), 0)
	if s.timer == nil {
		s.timer = time.NewTimer(d)
	} else {
		s.timer.Reset(d)
	}
	return s.timer.C
}

func (s *sender) stopTimers() {
	if s.timer != nil {
		s.timer.Stop()
	}
}

// acquire takes a window slot, expiring own calls' slots while it waits.
func (s *sender) acquire() error {
	for {
		select {
		case s.c.slots <- struct{}{}:
			return nil
		default:
		}
		var expiry <-chan time.Time
		if t, ok := s.expire(); ok {
			expiry = s.timerC(t)
		}
		select {
		case s.c.slots <- struct{}{}:
			return nil
		case <-expiry:
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.c.closed:
			return ErrClosed
		}
	}
}

// pace waits until due, unless it is less than a millisecond away: sleeping per message at thousands of
// messages per second would cost more than the rate limit is worth, and a millisecond of burst is harmless.
func (s *sender) pace(due time.Time) error {
	if time.Until(due) < time.Millisecond {
		return nil
	}
	for {
		t, ok := s.expire()
		if !ok || t.After(due) {
			t = due
		}
		select {
		case <-s.timerC(t):
			if !time.Now().Before(due) {
				return nil
			}
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-s.c.closed:
			return ErrClosed
		}
	}
}

// wait waits until done is closed or deadline passes (or ctx ends, or the channel closes), releasing the
// slots of own calls as they expire so that other batches are not held up.
func (s *sender) wait(done <-chan struct{}, deadline time.Time) {
	for {
		t, ok := s.expire()
		if !ok || t.After(deadline) {
			t = deadline
		}
		select {
		case <-done:
			return
		case <-s.timerC(t):
			if !time.Now().Before(deadline) {
				return
			}
		case <-s.ctx.Done():
			return
		case <-s.c.closed:
			return
		}
	}
}

// release frees p's window slot if it still holds one; the response handler and the sender race for it.
func (c *Channel) release(p *pendingCall) {
	if p.slot.CompareAndSwap(true, false) {
		<-c.slots
	}
}

var emptyPayload = []byte("{}")

func validateCall(call fleet.MethodCall) error {
	if err := protocol.ValidateDeviceID(call.DeviceID); err != nil {
		return err
	}
	if err := protocol.ValidateMethod(call.Method); err != nil {
		return err
	}
	if len(call.Payload) > MaxMethodPayload {
		return fmt.Errorf("payload of %d bytes exceeds the %d-byte limit", len(call.Payload), MaxMethodPayload)
	}
	if len(bytes.TrimSpace(call.Payload)) > 0 && !json.Valid(call.Payload) {
		return errors.New("payload is not valid JSON")
	}
	return nil
}

func failedResult(id string, status int, err error) fleet.MethodResult {
	return fleet.MethodResult{DeviceID: id, Outcome: fleet.MethodFailed, Status: status, Payload: errorBody(err.Error())}
}

func errorBody(msg string) json.RawMessage { return protocol.ErrorPayload(msg) }

// onReply runs on the inbox subscription's goroutine for every answer. It must not block: it claims the
// waiting call by request id and hands over the result.
func (c *Channel) onReply(m *nats.Msg) {
	now := time.Now()
	rid := m.Subject[min(len(c.inbox)+1, len(m.Subject)):]
	c.mu.Lock()
	p := c.pending[rid]
	// Claimed: a duplicate answer for the same rid finds nothing.
	delete(c.pending, rid)
	c.mu.Unlock()
	if p == nil {
		c.stats.foreign.Add(1)
		return
	}
	c.release(p)
	sent := p.sentAt.Load()
	if sent == 0 {
		return
	}
	latency := now.Sub(time.Unix(0, sent))
	if latency > p.b.timeout {
		c.stats.late.Add(1)
		return // too late: the call is TimedOut, as if the answer had not come
	}
	c.stats.responses.Add(1)
	if isNoResponders(m) {
		// No gateway subscribes to the device's subjects: it is not connected anywhere.
		c.stats.offline.Add(1)
		p.b.deliver(p.idx, classify(p.deviceID, protocol.StatusOffline, protocol.OfflinePayload(), latency))
		return
	}
	status, err := strconv.Atoi(m.Header.Get(protocol.HeaderStatus))
	if err != nil {
		p.b.deliver(p.idx, failedResult(p.deviceID, 502, fmt.Errorf("answer without a status from the gateway")))
		return
	}
	p.b.deliver(p.idx, classify(p.deviceID, status, m.Data, latency))
}

// isNoResponders reports whether m is NATS's "no responders" status message (503 without a body).
func isNoResponders(m *nats.Msg) bool {
	return len(m.Data) == 0 && m.Header.Get("Status") == "503"
}

// classify turns a response into a result.
func classify(id string, status int, body []byte, latency time.Duration) fleet.MethodResult {
	r := fleet.MethodResult{DeviceID: id, Status: status, Payload: rawJSON(body), Latency: latency}
	switch {
	case status >= 200 && status < 300:
		r.Outcome = fleet.MethodSucceeded
	case protocol.IsOffline(status, body):
		r.Outcome = fleet.MethodOffline
	default:
		r.Outcome = fleet.MethodFailed
	}
	return r
}

// rawJSON copies body (the result outlives the message) and keeps it valid JSON that Postgres can store as
// jsonb, where job outcomes go: a body that is not JSON, not UTF-8, or holds a NUL character (which jsonb
// refuses, escaped or not) becomes a JSON string of its printable text. One device's odd answer must not fail
// the write of its whole batch's outcomes.
func rawJSON(body []byte) json.RawMessage {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if json.Valid(body) && utf8.Valid(body) && !bytes.Contains(body, []byte(`\u0000`)) {
		return append(json.RawMessage(nil), body...)
	}
	b, _ := json.Marshal(strings.ToValidUTF8(strings.ReplaceAll(string(body), "\x00", ""), "\uFFFD"))
	return b
}
