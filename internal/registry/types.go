package registry

import (
	"encoding/json"
	"errors"
	"time"
)

// Device statuses. Only active devices may connect.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
	StatusRetired  = "retired"
)

// NotifyChannel is the Postgres channel on which a device id is announced whenever its status or credentials
// change (or it is deleted), so gateways can drop cached credentials and kick sessions at once.
const NotifyChannel = "fleetflow_device"

// ErrNotFound is returned (wrapped) when a device does not exist.
var ErrNotFound = errors.New("device not found")

// ErrPreconditionFailed is returned (wrapped) when an etag or version check fails.
var ErrPreconditionFailed = errors.New("precondition failed")

// Device is a registry row without its twin documents.
type Device struct {
	ID          string     `json:"deviceId"`
	Status      string     `json:"status"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	Online      bool       `json:"online"`
	Session     int64      `json:"session"`
	LastSeen    *time.Time `json:"lastSeen,omitempty"`
	ConnectedAt *time.Time `json:"connectedAt,omitempty"`
	HasSecret1  bool       `json:"primaryCredential"`
	HasSecret2  bool       `json:"secondaryCredential"`
	Provisioned string     `json:"provisionedBy,omitempty"`
	RetiredAt   *time.Time `json:"retiredAt,omitempty"`
	Replaces    string     `json:"replaces,omitempty"`   // the device this one took over from
	ReplacedBy  string     `json:"replacedBy,omitempty"` // the device that took over from this one
}

// DeviceAuth is what the gateway needs to authenticate a CONNECT.
type DeviceAuth struct {
	ID          string
	Status      string
	Secret1Hash []byte
	Secret2Hash []byte
}

// ReportedPatch is one device's reported-properties merge patch as received over MQTT.
type ReportedPatch struct {
	DeviceID  string
	RequestID string
	Patch     json.RawMessage
}

// ReportedResult is the outcome of one ReportedPatch: the new reported version, or why it was refused
// (ErrNotFound, a *twin.LimitError, twin.ErrInvalidJSON, or a device that is not active).
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
	// ConnSeen: the device was active (a message arrived); only last_seen moves.
	ConnSeen
)

// ConnEvent is a connection-state change recorded by the gateway in batches.
type ConnEvent struct {
	DeviceID string
	Kind     ConnKind
	Session  int64
	At       time.Time
}

// ErrNotActive is returned (wrapped) for writes on behalf of a device that is disabled or retired.
var ErrNotActive = errors.New("device is not active")
