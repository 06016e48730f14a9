package fleet

import (
	"context"
	"time"
)

// JobRotate rotates each device's secret (workflow RotateCredentials): a new secret's digest is written into
// the device's free slot, the secret is delivered with the rotateCredentials direct method, and once the
// device has connected with it the old slot is cleared (docs/architecture.md, "Credential rotation").
// Certificate devices renew their certificate the same way, from a key pair they generate themselves
// (docs/architecture.md, "Certificate renewal").
const JobRotate JobKind = "rotate_credentials"

// Reasons recorded with the targets of a rotation that were not rotated.
const (
	RotateUnknown  = "no such device"
	RotateRetired  = "device is retired"
	RotateDisabled = "device is disabled"
	// RotateKindChanged: the device moved between secrets and certificates while its rotation ran.
	RotateKindChanged = "the device's credentials changed kind (secret or certificate) during the rotation; rotate it again"
	// RotateNoCA: the worker cannot sign renewals (no fleet CA, or one that does not load).
	RotateNoCA = "certificate not renewed: the worker cannot sign with the fleet CA"
	// RotateAmbiguous: both slots hold a digest and the device has not connected since the gateways started
	// recording the slot, so writing either could take away the secret the device uses.
	RotateAmbiguous = "both credential slots are in use and it is not known which one the device uses; connect it once, then rotate again"
	RotateOffline   = "device offline: nothing was delivered; it keeps its secret"
	// RotateMissed: the device did not connect with its new secret before the grace ended. Both slots are
	// kept, so whichever secret it holds still works.
	RotateMissed = "did not connect with the new secret before the grace ended; its old secret still works"
	// RotateMissedCertificate is RotateMissed for a certificate renewal (docs/architecture.md, "Certificate
	// renewal"): both certificate slots are kept.
	RotateMissedCertificate = "did not connect with the new certificate before the grace ended; its old certificate still works"
)

// RotationWrite is one target of a rotation batch with the digest of the new secret the activity generated
// for it. The secret itself never leaves the activity's memory except towards the device. For a certificate
// renewal (Cert) Digest is the fingerprint of the certificate the activity signed for the device's request,
// and NotAfter its end (docs/architecture.md, "Certificate renewal").
type RotationWrite struct {
	Target   JobTarget
	Digest   []byte
	Cert     bool
	NotAfter time.Time
}

// RotationStaged is what StageRotation did with one target.
type RotationStaged struct {
	Seq      int64
	DeviceID string
	// Slot is the slot the new digest was written into (1 or 2), 0 when the target was not staged.
	Slot int
	// Send says the secret must now be delivered; false for targets refused (their outcome is recorded)
	// and for targets an earlier attempt delivered and whose device has connected with it already (now
	// running, awaiting confirmation).
	Send bool
}

// RotationUndo names a target whose new secret did not reach the device (offline, refused by it): its slot
// is cleared again, if it still holds Digest, in the transaction that records the target's outcome.
type RotationUndo struct {
	DeviceID string
	Slot     int
	Digest   []byte
	Cert     bool // Slot is a certificate slot and Digest a fingerprint
}

// CertificateSigner signs the certificate signing requests of renewing devices with the fleet CA, whose key
// it holds (the worker reads it from its directory; it never enters Temporal). A request it refuses (bad
// signature, another subject, a weak key) is an error wrapping pki.ErrCSRRefused, whose message says why.
type CertificateSigner interface {
	SignDeviceCSR(deviceID string, csrPEM []byte, validity time.Duration) (certPEM, fingerprint []byte, notAfter time.Time, err error)
}

// RotateStore is what a credential rotation's activities need from the registry.
type RotateStore interface {
	// StageRotation writes each target's new digest into the device's free slot and marks the target
	// dispatched, in one transaction, before any secret is sent; it returns one result per write, in order.
	// Only targets still pending or dispatched are touched (a target finished by another attempt meanwhile
	// rolls the transaction back, which the retry resolves). A target an earlier attempt staged keeps its
	// slot and gets the new digest (the secret that attempt generated is gone with it): the device still
	// holds the other slot's secret, which stays. A certificate write (RotationWrite.Cert) goes into a
	// certificate slot the same way. Unknown, retired and disabled devices, devices whose kind no longer
	// matches the write, and devices whose slot in use cannot be told, are recorded as failed with a
	// Rotate… reason.
	StageRotation(ctx context.Context, job string, writes []RotationWrite) ([]RotationStaged, error)
	// CertificateTargets reports which of the devices renew a certificate rather than a secret: active
	// devices with a certificate fingerprint and either no secret or a newest session that presented a
	// certificate (docs/architecture.md, "Certificate renewal").
	CertificateTargets(ctx context.Context, ids []string) (map[string]bool, error)
	// FinishRotationSends records the outcomes of a batch's deliveries and clears the slots of undos whose
	// digest is still the one written, in one transaction.
	FinishRotationSends(ctx context.Context, job string, outs []JobOutcome, undos []RotationUndo) error
	// CollectRotations completes the running targets of a rotation whose device has connected with the
	// digest (or certificate fingerprint) of its new slot: the other slot is cleared, the expiry set to now +
	// validity when validity is positive (never past a renewed certificate's end), a credentials_rotated
	// event recorded, the target succeeded. It returns what still waits.
	CollectRotations(ctx context.Context, job string, validity time.Duration) (AckProgress, error)
}
