package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// EnrollmentKind says how a device proves it belongs to an enrollment group (docs/architecture.md,
// "Zero-touch enrollment").
type EnrollmentKind string

// Enrollment kinds.
const (
	// EnrollSymmetric: the device's secret is the HMAC-SHA256 of its id under the group key.
	EnrollSymmetric EnrollmentKind = "symmetric"
	// EnrollX509: the device presents a client certificate signed by the group's CA, its id as the subject.
	EnrollX509 EnrollmentKind = "x509"
)

// EnrollmentGroup lets devices that are not registered yet register themselves on first contact. The group
// key is held only sealed (encrypted under the enrollment master key); the registry never sees it in clear.
type EnrollmentGroup struct {
	Name string         `json:"name"`
	Kind EnrollmentKind `json:"kind"`
	// SealedKey is the group key encrypted under the enrollment master key (docs/architecture.md,
	// "Zero-touch enrollment"); never in a workflow payload.
	SealedKey []byte `json:"-"`
	// CACert is the PEM certificate of the CA that signs an x509 group's device certificates.
	CACert  string          `json:"caCert,omitempty"`
	Tags    json.RawMessage `json:"tags,omitempty"`
	Desired json.RawMessage `json:"desired,omitempty"`
	// MaxDevices caps how many devices may register through the group (0: no cap).
	MaxDevices int64 `json:"maxDevices,omitempty"`
	// IDPattern, when set, is a regular expression every registering id must match as a whole.
	IDPattern  string    `json:"idPattern,omitempty"`
	Disabled   bool      `json:"disabled"`
	Registered int64     `json:"registered"`
	Refused    int64     `json:"refused"`
	CreatedAt  time.Time `json:"createdAt"`
}

// Registration asks the registry to create a device that proved membership of an enrollment group. It
// carries the digest of the device's derived secret (symmetric groups) or its certificate's fingerprint (x509
// groups), as the registry stores them, never a secret.
type Registration struct {
	DeviceID        string `json:"deviceId"`
	Group           string `json:"group"`
	SecretDigest    []byte `json:"secretDigest,omitempty"`
	CertFingerprint []byte `json:"certFingerprint,omitempty"`
}

// RegistrationOutcome is what became of a Registration.
type RegistrationOutcome struct {
	// Registered: the device exists now (created by this registration or an earlier one of the same
	// group with the same secret, so a repeated first contact is harmless).
	Registered bool `json:"registered"`
	// Created: this call inserted the device.
	Created bool `json:"created"`
	// Reason says why a registration was refused (group disabled or full, id outside the pattern, id taken
	// or retired).
	Reason string `json:"reason,omitempty"`
}

// ErrEnrollmentGroupNotFound: no enrollment group has that name.
var ErrEnrollmentGroupNotFound = errors.New("enrollment group not found")

// ErrEnrollmentGroupExists: an enrollment group of that name exists already.
var ErrEnrollmentGroupExists = errors.New("enrollment group exists")

// EnrollStore is what enrollment needs from the registry: the gateway reads the groups, the RegisterDevice
// workflow's activity registers devices.
type EnrollStore interface {
	// EnrollmentGroups lists every group, disabled ones included, by name.
	EnrollmentGroups(ctx context.Context) ([]EnrollmentGroup, error)
	// RegisterEnrolled creates the devices of regs in one transaction with their groups' checks (enabled,
	// cap, pattern), initial tags and desired properties, timeline events and the groups' counters, and
	// returns one outcome per registration, in order. It is idempotent: a device the same group registered
	// with the same digest is reported as registered.
	RegisterEnrolled(ctx context.Context, regs []Registration) ([]RegistrationOutcome, error)
}
