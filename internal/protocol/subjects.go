package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The device channel between processes is a NATS bus (docs/architecture.md, "Scale-out: gateways over
// NATS"): the gateway holding a device's session subscribes to the device's subjects while it is connected,
// and workers and the CLI publish to them. Every subject of a device is
//
//	ff.dev.<token>.<kind>
//
// where <token> is the device id with '.' written as '~' (NATS separates subject tokens with '.', and '~'
// cannot occur in a device id, so the encoding is reversible) and <kind> is one of the SubjectKinds below.

// SubjectPrefix starts every device subject.
const SubjectPrefix = "ff.dev."

// SubjectKind is the last token of a device subject.
type SubjectKind string

// The kinds of device subject.
const (
	// SubjectDesired carries a desired patch (the body) with its version in HeaderVersion; plain publish.
	SubjectDesired SubjectKind = "desired"
	// SubjectMethod carries a method request (the body is its JSON payload) as NATS request/reply: the
	// method name in HeaderMethod, the caller's timeout in HeaderTimeout. The reply carries the device's
	// status in HeaderStatus and its response body. A request no gateway subscribes to is answered by NATS
	// itself with "no responders": the device is offline, cluster-wide.
	SubjectMethod SubjectKind = "method"
	// SubjectKick tells the gateways holding an older session of the device to end it: the body is the
	// decimal session number of the newer session (KickPayload).
	SubjectKick SubjectKind = "kick"
)

// Header names of device subjects' messages.
const (
	HeaderVersion = "Ff-Version"    // desired patch version, decimal
	HeaderMethod  = "Ff-Method"     // method name
	HeaderTimeout = "Ff-Timeout-Ms" // the caller's method timeout in milliseconds, decimal
	HeaderStatus  = "Ff-Status"     // a method reply's status, decimal (200, 404, 500, …)
)

// SubjectToken encodes a valid device id as one NATS subject token ('.' → '~'). For ids that are not
// valid device ids the result is unspecified; callers validate first.
func SubjectToken(id string) string {
	if strings.IndexByte(id, '.') < 0 {
		return id
	}
	return strings.ReplaceAll(id, ".", "~")
}

// ParseSubjectToken inverts SubjectToken: it returns the device id of a token, or an error when the token
// is not the encoding of a valid device id.
func ParseSubjectToken(tok string) (string, error) {
	if strings.IndexByte(tok, '.') >= 0 {
		return "", fmt.Errorf("%w subject token %q: contains '.'", ErrInvalidID, tok)
	}
	id := strings.ReplaceAll(tok, "~", ".")
	if !ValidDeviceID(id) {
		return "", fmt.Errorf("%w subject token %q: not an encoded device id", ErrInvalidID, tok)
	}
	return id, nil
}

// DeviceSubject is the subject of kind k of device id.
func DeviceSubject(id string, k SubjectKind) string {
	return SubjectPrefix + SubjectToken(id) + "." + string(k)
}

// DeviceSubjectFilter matches every subject of device id: what the gateway holding its session subscribes to.
func DeviceSubjectFilter(id string) string { return SubjectPrefix + SubjectToken(id) + ".*" }

// ErrNotDeviceSubject marks a subject that is not a device subject of the contract.
var ErrNotDeviceSubject = errors.New("not a device subject")

// ParseDeviceSubject splits a device subject into the device id and kind; it inverts DeviceSubject.
func ParseDeviceSubject(subject string) (id string, k SubjectKind, err error) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix)
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrNotDeviceSubject, subject)
	}
	tok, kind, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrNotDeviceSubject, subject)
	}
	switch k = SubjectKind(kind); k {
	case SubjectDesired, SubjectMethod, SubjectKick:
	default:
		return "", "", fmt.Errorf("%w: %q: unknown kind %q", ErrNotDeviceSubject, subject, kind)
	}
	if id, err = ParseSubjectToken(tok); err != nil {
		return "", "", fmt.Errorf("%w: %q: %w", ErrNotDeviceSubject, subject, err)
	}
	return id, k, nil
}

// KickPayload is the body of a kick: the newer session's number.
func KickPayload(session int64) []byte { return strconv.AppendInt(nil, session, 10) }

// ParseKick reads a kick's session number.
func ParseKick(body []byte) (int64, error) {
	n, err := strconv.ParseInt(string(body), 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("kick: session number %q", body)
	}
	return n, nil
}

// FormatTimeout and ParseTimeout write and read HeaderTimeout. A missing or unreadable header means
// DefaultMethodTimeout; the gateway uses it to bound how long it waits for the device's answer.
func FormatTimeout(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// ParseTimeout reads HeaderTimeout (see FormatTimeout).
func ParseTimeout(s string) time.Duration {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return DefaultMethodTimeout
	}
	return time.Duration(ms) * time.Millisecond
}

// Downlink is one message for a device as the gateway holding its session receives it from the bus.
type Downlink struct {
	Device string
	Kind   SubjectKind
	// Version is a desired patch's version (SubjectDesired).
	Version int64
	// Session is the newer session's number (SubjectKick).
	Session int64
	// Method and Timeout are a method request's name and the caller's timeout (SubjectMethod).
	Method  string
	Timeout time.Duration
	// Payload is the desired patch or the method's JSON payload.
	Payload []byte
	// Reply is where a method's answer goes; opaque to the gateway, which hands it back to the bus.
	Reply string
}

// ParseDownlink checks a message received on a device subject and returns it as a Downlink. header reads
// one header of the message.
func ParseDownlink(subject string, header func(string) string, body []byte, reply string) (Downlink, error) {
	id, k, err := ParseDeviceSubject(subject)
	if err != nil {
		return Downlink{}, err
	}
	d := Downlink{Device: id, Kind: k, Payload: body, Reply: reply}
	switch k {
	case SubjectDesired:
		d.Version, err = strconv.ParseInt(header(HeaderVersion), 10, 64)
		if err != nil || d.Version < 1 {
			return Downlink{}, fmt.Errorf("desired patch for %s: version %q", id, header(HeaderVersion))
		}
		if len(body) > MaxDesiredPatch {
			return Downlink{}, fmt.Errorf("desired patch for %s: %d bytes exceeds %d", id, len(body), MaxDesiredPatch)
		}
	case SubjectMethod:
		d.Method = header(HeaderMethod)
		if err := ValidateMethod(d.Method); err != nil {
			return Downlink{}, fmt.Errorf("method request for %s: %w", id, err)
		}
		if reply == "" {
			return Downlink{}, fmt.Errorf("method request for %s: no reply subject", id)
		}
		if len(body) > MaxMethodPayload {
			return Downlink{}, fmt.Errorf("method request for %s: %d bytes exceeds %d", id, len(body), MaxMethodPayload)
		}
		d.Timeout = ParseTimeout(header(HeaderTimeout))
	case SubjectKick:
		if d.Session, err = ParseKick(body); err != nil {
			return Downlink{}, fmt.Errorf("kick for %s: %w", id, err)
		}
		d.Payload = nil
	}
	return d, nil
}
