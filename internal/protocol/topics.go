package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Root is the first level of every topic of the device channel, with its separator.
const Root = "devices/"

// Kind is the kind of a topic of the contract.
type Kind int

// The topics of the contract (docs/architecture.md, "The device protocol"). The comment of each names its
// direction (D→C: device to cloud) and the QoS its publisher uses.
const (
	// KindInvalid is the zero Kind; Parse never returns it without an error.
	KindInvalid Kind = iota
	// KindTelemetry is devices/{id}/telemetry[/{stream}], D→C, QoS 0.
	KindTelemetry
	// KindTwinGet is devices/{id}/twin/get/{rid}, D→C, QoS 1; asked on every (re)connect.
	KindTwinGet
	// KindTwinReported is devices/{id}/twin/reported/{rid}, D→C, QoS 1; the body is a JSON merge patch.
	KindTwinReported
	// KindTwinResponse is devices/{id}/twin/res/{status}/{rid}, C→D, QoS 1: the gateway's answer.
	KindTwinResponse
	// KindDesired is devices/{id}/twin/desired/{version}, C→D, QoS 1; the body is a JSON merge patch.
	KindDesired
	// KindMethodRequest is devices/{id}/methods/req/{method}/{rid}, C→D, QoS 0 (online only).
	KindMethodRequest
	// KindMethodResponse is devices/{id}/methods/res/{status}/{rid}, D→C, QoS 1 (also the gateway's
	// offline answer).
	KindMethodResponse
	// KindState is devices/{id}/state, D→C, QoS 1, retained: the birth and last-will message.
	KindState
	// KindJobStatus is devices/{id}/jobs/{jobId}/status, D→C, QoS 1: job progress.
	KindJobStatus
)

var kindNames = [...]string{"invalid", "telemetry", "twin get", "twin reported", "twin response", "desired",
	"method request", "method response", "state", "job status"}

// String names the kind for logs and errors.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// FromDevice reports whether devices publish topics of kind k (the gateway ingests them); the others are
// published to devices, by the gateway (twin responses) or by services (desired patches, method requests).
func (k Kind) FromDevice() bool {
	switch k {
	case KindTelemetry, KindTwinGet, KindTwinReported, KindMethodResponse, KindState, KindJobStatus:
		return true
	}
	return false
}

// Topic is a parsed topic of the contract. Only the fields of its Kind are set.
type Topic struct {
	Device    string // every kind
	Kind      Kind
	RequestID string // twin get, reported and response; method request and response
	Method    string // method request
	Status    int    // twin and method responses, 100–599
	Version   int64  // desired patch, ≥ 1
	JobID     string // job status
	Stream    string // telemetry, "" for the default stream; may have several levels
}

// ErrInvalidTopic marks a topic that is not one of the contract's.
var ErrInvalidTopic = errors.New("not a topic of the device contract")

// TelemetryTopic is devices/{id}/telemetry, or devices/{id}/telemetry/{stream} when stream is not empty.
func TelemetryTopic(id, stream string) string {
	if stream == "" {
		return Root + id + "/telemetry"
	}
	return Root + id + "/telemetry/" + stream
}

// TwinGetTopic is devices/{id}/twin/get/{rid}.
func TwinGetTopic(id, rid string) string { return Root + id + "/twin/get/" + rid }

// TwinReportedTopic is devices/{id}/twin/reported/{rid}.
func TwinReportedTopic(id, rid string) string { return Root + id + "/twin/reported/" + rid }

// TwinResponseTopic is devices/{id}/twin/res/{status}/{rid}.
func TwinResponseTopic(id string, status int, rid string) string {
	return Root + id + "/twin/res/" + strconv.Itoa(status) + "/" + rid
}

// DesiredTopic is devices/{id}/twin/desired/{version}.
func DesiredTopic(id string, version int64) string {
	return Root + id + "/twin/desired/" + strconv.FormatInt(version, 10)
}

// MethodRequestTopic is devices/{id}/methods/req/{method}/{rid}.
func MethodRequestTopic(id, method, rid string) string {
	return Root + id + "/methods/req/" + method + "/" + rid
}

// MethodResponseTopic is devices/{id}/methods/res/{status}/{rid}.
func MethodResponseTopic(id string, status int, rid string) string {
	return Root + id + "/methods/res/" + strconv.Itoa(status) + "/" + rid
}

// StateTopic is devices/{id}/state, where a device keeps its retained birth/LWT message.
func StateTopic(id string) string { return Root + id + "/state" }

// JobStatusTopic is devices/{id}/jobs/{jobId}/status.
func JobStatusTopic(id, jobID string) string { return Root + id + "/jobs/" + jobID + "/status" }

// String builds the topic t describes; for a Topic returned by Parse it is the parsed topic. It does not
// validate t; the zero Topic gives "".
func (t Topic) String() string {
	switch t.Kind {
	case KindTelemetry:
		return TelemetryTopic(t.Device, t.Stream)
	case KindTwinGet:
		return TwinGetTopic(t.Device, t.RequestID)
	case KindTwinReported:
		return TwinReportedTopic(t.Device, t.RequestID)
	case KindTwinResponse:
		return TwinResponseTopic(t.Device, t.Status, t.RequestID)
	case KindDesired:
		return DesiredTopic(t.Device, t.Version)
	case KindMethodRequest:
		return MethodRequestTopic(t.Device, t.Method, t.RequestID)
	case KindMethodResponse:
		return MethodResponseTopic(t.Device, t.Status, t.RequestID)
	case KindState:
		return StateTopic(t.Device)
	case KindJobStatus:
		return JobStatusTopic(t.Device, t.JobID)
	}
	return ""
}

// Parse parses a topic name of the contract. Every part is validated: the device id (ValidDeviceID),
// request ids, method names and job ids (1–64 of [A-Za-z0-9._-]), statuses (100–599), desired versions
// (≥ 1), telemetry streams (ValidStream); numbers must be in canonical decimal form, so that Parse(x).String()
// == x. Anything else is an error wrapping ErrInvalidTopic, which says what is wrong.
func Parse(topic string) (Topic, error) {
	rest, ok := strings.CutPrefix(topic, Root)
	if !ok {
		return Topic{}, invalid(topic, "not under "+Root)
	}
	id, rest, _ := strings.Cut(rest, "/")
	if !ValidDeviceID(id) {
		return Topic{}, invalid(topic, "bad device id")
	}
	t := Topic{Device: id}
	group, rest, _ := strings.Cut(rest, "/")
	switch group {
	case "telemetry":
		// devices/{id}/telemetry or devices/{id}/telemetry/{stream…}
		if rest == "" && !strings.HasSuffix(topic, "/") {
			t.Kind = KindTelemetry
			return t, nil
		}
		if !ValidStream(rest) {
			return Topic{}, invalid(topic, "bad telemetry stream")
		}
		t.Kind, t.Stream = KindTelemetry, rest
		return t, nil
	case "state":
		if rest != "" || strings.HasSuffix(topic, "/") {
			return Topic{}, invalid(topic, "levels after state")
		}
		t.Kind = KindState
		return t, nil
	case "twin":
		return parseTwin(topic, t, rest)
	case "methods":
		return parseMethods(topic, t, rest)
	case "jobs":
		// jobs/{jobId}/status
		job, tail, _ := strings.Cut(rest, "/")
		if tail != "status" {
			return Topic{}, invalid(topic, "job topic must end in /status")
		}
		if !ValidJobID(job) {
			return Topic{}, invalid(topic, "bad job id")
		}
		t.Kind, t.JobID = KindJobStatus, job
		return t, nil
	}
	return Topic{}, invalid(topic, "unknown topic group")
}

func parseTwin(topic string, t Topic, rest string) (Topic, error) {
	op, rest, _ := strings.Cut(rest, "/")
	switch op {
	case "get", "reported":
		// twin/get/{rid}, twin/reported/{rid}
		if !ValidRequestID(rest) {
			return Topic{}, invalid(topic, "bad request id")
		}
		t.Kind, t.RequestID = KindTwinGet, rest
		if op == "reported" {
			t.Kind = KindTwinReported
		}
		return t, nil
	case "res":
		// twin/res/{status}/{rid}
		st, rid, ok := parseStatusRID(rest)
		if !ok {
			return Topic{}, invalid(topic, "bad status or request id")
		}
		t.Kind, t.Status, t.RequestID = KindTwinResponse, st, rid
		return t, nil
	case "desired":
		// twin/desired/{version}
		v, ok := parseDecimal(rest)
		if !ok || v < 1 {
			return Topic{}, invalid(topic, "bad desired version")
		}
		t.Kind, t.Version = KindDesired, v
		return t, nil
	}
	return Topic{}, invalid(topic, "unknown twin topic")
}

func parseMethods(topic string, t Topic, rest string) (Topic, error) {
	op, rest, _ := strings.Cut(rest, "/")
	switch op {
	case "req":
		// methods/req/{method}/{rid}
		method, rid, _ := strings.Cut(rest, "/")
		if !ValidMethod(method) {
			return Topic{}, invalid(topic, "bad method name")
		}
		if !ValidRequestID(rid) {
			return Topic{}, invalid(topic, "bad request id")
		}
		t.Kind, t.Method, t.RequestID = KindMethodRequest, method, rid
		return t, nil
	case "res":
		// methods/res/{status}/{rid}
		st, rid, ok := parseStatusRID(rest)
		if !ok {
			return Topic{}, invalid(topic, "bad status or request id")
		}
		t.Kind, t.Status, t.RequestID = KindMethodResponse, st, rid
		return t, nil
	}
	return Topic{}, invalid(topic, "unknown method topic")
}

// parseStatusRID parses {status}/{rid}.
func parseStatusRID(s string) (int, string, bool) {
	st, rid, _ := strings.Cut(s, "/")
	n, ok := parseDecimal(st)
	if !ok || n < 100 || n > 599 || !ValidRequestID(rid) {
		return 0, "", false
	}
	return int(n), rid, true
}

// parseDecimal accepts a non-negative decimal in canonical form (no sign, no leading zero, fits int64).
func parseDecimal(s string) (int64, bool) {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func invalid(topic, why string) error {
	return fmt.Errorf("%w: %q: %s", ErrInvalidTopic, topic, why)
}
