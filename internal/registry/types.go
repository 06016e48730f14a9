package registry

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
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
var ErrNotFound = fleet.ErrNotFound

// ErrPreconditionFailed is returned (wrapped) when an etag or version check fails.
var ErrPreconditionFailed = fleet.ErrPreconditionFailed

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

// DeviceAuth is what the gateway needs to authenticate a CONNECT (the domain's type).
type DeviceAuth = fleet.DeviceAuth

// ReportedPatch is one device's reported-properties merge patch as received over MQTT (the domain's type).
type ReportedPatch = fleet.ReportedPatch

// ReportedResult is the outcome of one ReportedPatch (the domain's type).
type ReportedResult = fleet.ReportedResult

// ConnKind is the kind of a connection event (the domain's type).
type ConnKind = fleet.ConnKind

// Connection event kinds (the domain's).
const (
	ConnUp   = fleet.ConnUp
	ConnDown = fleet.ConnDown
	ConnSeen = fleet.ConnSeen
)

// ConnEvent is a connection-state change recorded by the gateway in batches (the domain's type).
type ConnEvent = fleet.ConnEvent

// ErrNotActive is returned (wrapped) for writes on behalf of a device that is disabled or retired.
var ErrNotActive = fleet.ErrNotActive

// The registry is the store of every stage (and the fake in internal/fleet/fleettest passes the same
// contract test).
var (
	_ fleet.ProvisionStore = (*Registry)(nil)
	_ fleet.JobStore       = (*Registry)(nil)
	_ fleet.RolloutStore   = (*Registry)(nil)
	_ fleet.RetireStore    = (*Registry)(nil)
	_ fleet.MonitorStore   = (*Registry)(nil)
)
