package fleet

import (
	"encoding/json"
	"errors"
	"time"
)

// DeviceStatus is a device's administrative state. Only active devices may connect.
type DeviceStatus string

// Device statuses.
const (
	StatusActive   DeviceStatus = "active"
	StatusDisabled DeviceStatus = "disabled"
	StatusRetired  DeviceStatus = "retired"
)

// Errors every store reports the same way, so callers classify them with errors.Is whatever the adapter.
var (
	// ErrNotFound: the device does not exist.
	ErrNotFound = errors.New("device not found")
	// ErrNotActive: a write on behalf of a device that is disabled or retired.
	ErrNotActive = errors.New("device is not active")
	// ErrPreconditionFailed: an etag or version check failed.
	ErrPreconditionFailed = errors.New("precondition failed")
)

// DevicesInserted is the device change notice (the payload of NOTIFY fleetflow_device) that says new devices
// were inserted, without naming them: one notice per INSERT or COPY statement, so that provisioning a million
// devices does not send a million notices. It is not a valid device id. Gateways forget the ids they
// remembered as unknown on it (docs/architecture.md, "Abuse: floods of CONNECTs").
const DevicesInserted = "*inserted"

// EnrollmentGroupsChanged is the device change notice that says an enrollment group was created, disabled,
// enabled or removed (docs/architecture.md, "Zero-touch enrollment"): gateways read the groups again at once.
// It is not a valid device id.
const EnrollmentGroupsChanged = "*enrollment"

// SchemeChanged is the device change notice that says a version of the metadata scheme was activated (or a
// scheme row otherwise changed state; migration 021): gateways read the scheme in force again, so that a new
// reported-properties schema is enforced at ingest at once (docs/architecture.md, "Metadata scheme"). It is
// not a valid device id.
const SchemeChanged = "*scheme"

// DeviceAuth is what a gateway needs to authenticate a CONNECT: the digests of the device's secrets and
// the fingerprint of its client certificate, any of which may be empty (docs/architecture.md, "Device
// certificates").
type DeviceAuth struct {
	ID          string
	Status      DeviceStatus
	Secret1Hash []byte
	Secret2Hash []byte
	// CertFingerprint is the SHA-256 of the DER encoding of the device's client certificate.
	CertFingerprint []byte
	// Cert2Fingerprint is the second certificate slot's, written by a certificate renewal (docs/architecture.md,
	// "Certificate renewal"): a certificate matching either slot is accepted.
	Cert2Fingerprint []byte
	// ExpiresAt is when the device's credentials stop being accepted (zero: never). The gateway checks it at
	// every CONNECT, cached record or not (docs/architecture.md, "Credential rotation").
	ExpiresAt time.Time
}

// ReportedPatch is one device's reported-properties merge patch as received from the device.
type ReportedPatch struct {
	DeviceID  string
	RequestID string
	Patch     json.RawMessage
}

// ReportedResult is the outcome of one ReportedPatch: the new reported version, or why it was refused
// (ErrNotFound, ErrNotActive, a twin limit or invalid JSON).
type ReportedResult struct {
	DeviceID  string
	RequestID string
	Version   int64
	Err       error
}

// ConnKind is the kind of a connection event.
type ConnKind int

// Connection event kinds.
const (
	// ConnUp: the device connected with session number Session.
	ConnUp ConnKind = iota
	// ConnDown: the device's session Session ended; ignored if a newer session has connected since.
	ConnDown
	// ConnSeen: the device was active (a message arrived); only last-seen moves.
	ConnSeen
	// ConnRefused: a CONNECT with the device's right credentials was refused for Reason (its credentials
	// have expired); only the device's timeline records it.
	ConnRefused
	// ConnReportRefused: a reported patch of the device was refused for Reason (it violates the metadata
	// scheme's reported-properties schema); only the device's timeline records it.
	ConnReportRefused
)

// ConnEvent is a connection-state change, recorded by gateways in batches.
type ConnEvent struct {
	DeviceID string
	Kind     ConnKind
	Session  int64
	At       time.Time
	// Slot (ConnUp) is the secret slot the session authenticated with (1 or 2; 0: a client certificate)
	// and Digest that slot's digest as the gateway checked it, which a credential rotation compares with
	// the slot's digest now (docs/architecture.md, "Credential rotation").
	Slot   int
	Digest []byte
	// Reason (ConnRefused, ConnReportRefused) says why the CONNECT or the report was refused.
	Reason string
}

// JobStatus is one progress message a device sent about a job (a firmware update, say).
type JobStatus struct {
	DeviceID string
	JobID    string
	Status   string // one of the device protocol's job statuses
	Reason   string // why it failed, free text, may be empty
	Progress int    // percent 0..100, 0 when not given
	At       time.Time
}
