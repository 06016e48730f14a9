package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetflow/fleetflow/internal/protocol"
	"github.com/fleetflow/fleetflow/internal/twin"
)

// ResponseError is a non-2xx answer from the gateway to a twin request.
type ResponseError struct {
	Status  int
	Message string
	// Code classifies the error where the status does not (protocol.SchemeViolationCode: the metadata scheme
	// refused a reported patch, whose Violations are then listed).
	Code       string
	Violations []protocol.PathRule
}

// Error includes the status, which tells the caller whether retrying can help (429, 503) or not (400, 404).
func (e *ResponseError) Error() string {
	return fmt.Sprintf("gateway answered %d: %s", e.Status, e.Message)
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

type response struct {
	status int
	body   []byte
	lost   bool // the connection dropped before an answer came (onConnectionLost)
}

// twinGet fetches the twin and adopts its desired document unless a newer patch already arrived.
func (d *Device) twinGet() error {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.RequestTimeout)
	defer cancel()
	res, err := d.request(ctx, protocol.TwinGetTopic, nil)
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
	res, err := d.request(ctx, protocol.TwinReportedTopic, body)
	if err != nil {
		return 0, fmt.Errorf("report: %w", err)
	}
	if res.status/100 != 2 {
		return 0, fmt.Errorf("report: %w", responseError(res))
	}
	var ack protocol.ReportedAck
	if err := json.Unmarshal(res.body, &ack); err != nil {
		return 0, fmt.Errorf("report: decode acknowledgement: %w", err)
	}
	return ack.Version, nil
}

// request publishes a twin request on the topic topicOf builds (protocol.TwinGetTopic or
// protocol.TwinReportedTopic) and waits for twin/res/{status}/{rid}.
func (d *Device) request(ctx context.Context, topicOf func(id, rid string) string, body []byte) (response, error) {
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
	tok := c.Publish(topicOf(d.cfg.ID, rid), 1, false, body)
	done := tok.Done()
	for {
		select {
		case res := <-ch:
			if res.lost {
				return response{}, ErrConnectionLost
			}
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

func responseError(r response) error {
	e := protocol.ParseError(r.body)
	return &ResponseError{Status: r.status, Message: e.Error, Code: e.Code, Violations: e.Violations}
}
