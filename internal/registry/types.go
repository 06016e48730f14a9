package registry

import (
	"time"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// NotifyChannel is the Postgres channel on which a device id is announced whenever its status or credentials
// change (or it is deleted), so gateways can drop cached credentials and kick sessions at once.
const NotifyChannel = "fleetflow_device"

// Device is a registry row without its twin documents.
type Device struct {
	ID          string             `json:"deviceId"`
	Status      fleet.DeviceStatus `json:"status"`
	CreatedAt   time.Time          `json:"createdAt"`
	UpdatedAt   time.Time          `json:"updatedAt"`
	Online      bool               `json:"online"`
	Session     int64              `json:"session"`
	LastSeen    *time.Time         `json:"lastSeen,omitempty"`
	ConnectedAt *time.Time         `json:"connectedAt,omitempty"`
	HasSecret1  bool               `json:"primaryCredential"`
	HasSecret2  bool               `json:"secondaryCredential"`
	// AuthSlot is the secret slot the newest session authenticated with (1 or 2; 0 a certificate; nil: not
	// recorded yet), and CredentialExpiresAt when the credentials stop being accepted (nil: never).
	AuthSlot            *int       `json:"credentialSlotInUse,omitempty"`
	CredentialExpiresAt *time.Time `json:"credentialExpiresAt,omitempty"`
	// CertFingerprint is the SHA-256 of the device's client certificate in lower-case hex, when it has one
	// (not a secret: the certificate is public; docs/architecture.md, "Device certificates").
	CertFingerprint string `json:"certificateFingerprint,omitempty"`
	// Cert2Fingerprint is the second certificate slot's, written by a certificate renewal; CertNotAfter and
	// Cert2NotAfter are the slots' certificates' ends where provisioning issued or a renewal signed them
	// (nil: not recorded, an enrolled certificate's), and CertSlotInUse the certificate slot the newest
	// session presented (0: none or not known) (docs/architecture.md, "Certificate renewal").
	Cert2Fingerprint string     `json:"certificate2Fingerprint,omitempty"`
	CertNotAfter     *time.Time `json:"certificateNotAfter,omitempty"`
	Cert2NotAfter    *time.Time `json:"certificate2NotAfter,omitempty"`
	CertSlotInUse    int        `json:"certificateSlotInUse,omitempty"`
	Provisioned      string     `json:"provisionedBy,omitempty"`
	RetiredAt        *time.Time `json:"retiredAt,omitempty"`
	Replaces         string     `json:"replaces,omitempty"`   // the device this one took over from
	ReplacedBy       string     `json:"replacedBy,omitempty"` // the device that took over from this one
}

// The registry is the store of every stage (and the fake in internal/fleet/fleettest passes the same
// contract test).
var (
	_ fleet.ProvisionStore = (*Registry)(nil)
	_ fleet.JobStore       = (*Registry)(nil)
	_ fleet.RolloutStore   = (*Registry)(nil)
	_ fleet.RetireStore    = (*Registry)(nil)
	_ fleet.MonitorStore   = (*Registry)(nil)
)

// The device statuses as the registry's SQL reads and writes them (text columns scanned into strings).
const (
	statusActive   = string(fleet.StatusActive)
	statusDisabled = string(fleet.StatusDisabled)
	statusRetired  = string(fleet.StatusRetired)
)
