package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDLen bounds device ids, request ids, method names and job ids: each is one short topic level.
const MaxIDLen = 64

// ReservedID is the embedded broker's own client id (mochi's inline client), so no device may have it: a
// device taking it over would cut the gateway off from its own subscription.
const ReservedID = "inline"

// ServiceUsername is the MQTT username of fleetflow's own services (workers, CLI). It contains ':' so that
// it can never be a device id, which keeps the two kinds of client apart in the gateway's auth and ACL.
const ServiceUsername = "svc:fleetflow"

// ErrInvalidID marks an id (device id, method name, job id) that breaks the contract's rules. The
// validators' errors read "invalid device id …", "invalid method name …", "invalid job id …".
var ErrInvalidID = errors.New("invalid")

// ValidDeviceID reports whether id matches `[a-z0-9][a-z0-9._-]{0,63}` and is not ReservedID. It runs for
// every row of a million-row manifest and every CONNECT, so it is a byte loop rather than a regexp match.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen || id == ReservedID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// ValidateDeviceID is ValidDeviceID with an error that says what is wrong; it wraps ErrInvalidID.
func ValidateDeviceID(id string) error {
	switch {
	case ValidDeviceID(id):
		return nil
	case id == ReservedID:
		return fmt.Errorf("%w device id %q: reserved by the gateway", ErrInvalidID, id)
	default:
		return fmt.Errorf("%w device id %q: must match [a-z0-9][a-z0-9._-]{0,63}", ErrInvalidID, id)
	}
}

// validToken accepts 1–64 characters of [A-Za-z0-9._-]: one plain topic level that is safe to publish and
// to echo back in a response topic ('/', '+' and '#' would change the topic or make the broker drop the
// connection).
func validToken(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidRequestID reports whether rid may be a request id: 1–64 characters of [A-Za-z0-9._-].
func ValidRequestID(rid string) bool { return validToken(rid) }

// ValidMethod reports whether name may be a direct method's name: 1–64 characters of [A-Za-z0-9._-].
func ValidMethod(name string) bool { return validToken(name) }

// ValidJobID reports whether id may be a job id in a topic: 1–64 characters of [A-Za-z0-9._-].
func ValidJobID(id string) bool { return validToken(id) }

// ValidateMethod is ValidMethod with an error that says what is wrong; it wraps ErrInvalidID.
func ValidateMethod(name string) error {
	if !ValidMethod(name) {
		return fmt.Errorf("%w method name %q: must match [A-Za-z0-9._-]{1,64}", ErrInvalidID, name)
	}
	return nil
}

// ValidateJobID is ValidJobID with an error that says what is wrong; it wraps ErrInvalidID.
func ValidateJobID(id string) error {
	if !ValidJobID(id) {
		return fmt.Errorf("%w job id %q: must be 1-64 characters of [A-Za-z0-9._-]", ErrInvalidID, id)
	}
	return nil
}

// ValidLevel reports whether s can be one level of a topic name: not empty, valid UTF-8, and free of the
// separator '/', the wildcards '+' and '#' and NUL, which MQTT forbids in topic names.
func ValidLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00") && utf8.ValidString(s)
}

// ValidStream reports whether s can be a telemetry stream: one or more valid levels joined by '/'.
func ValidStream(s string) bool {
	for level := range strings.SplitSeq(s, "/") {
		if !ValidLevel(level) {
			return false
		}
	}
	return true
}
