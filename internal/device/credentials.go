package device

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// Credentials are a device's secrets as it stores them: one per registry slot, and the slot to present
// first. A credential rotation (docs/architecture.md, "Credential rotation") writes a new secret into one
// slot and leaves the other alone until the registry has seen the device connect with the new one, so a
// device that keeps both can always connect, whichever step of a rotation was interrupted.
type Credentials struct {
	Secret  string // slot 1
	Secret2 string // slot 2
	// Cert and Cert2 are the client certificates (with their keys) of the registry's two certificate
	// slots, either may be nil; a certificate renewal writes one and leaves the other alone the same way
	// (docs/architecture.md, "Certificate renewal"). Over TLS the slot's certificate is presented.
	Cert, Cert2 *tls.Certificate
	// PendingKey is the private key of the newest certificate request (renewCertificate) whose certificate
	// has not been installed yet. It is stored with the rest before the request is answered, so that a device
	// restarted between the request and installCertificate still holds the key its new certificate is for;
	// a newer request replaces it and the installation clears it. It never leaves the device.
	PendingKey crypto.Signer
	// Slot is the slot presented first (1 or 2); a refused CONNECT is retried with the other one.
	Slot int
}

// secret returns slot's secret.
func (c Credentials) secret(slot int) string {
	if slot == 2 {
		return c.Secret2
	}
	return c.Secret
}

// cert returns slot's client certificate.
func (c Credentials) cert(slot int) *tls.Certificate {
	if slot == 2 {
		return c.Cert2
	}
	return c.Cert
}

// has reports whether slot holds a secret or a certificate.
func (c Credentials) has(slot int) bool { return c.secret(slot) != "" || c.cert(slot) != nil }

// other is the slot that is not slot.
func other(slot int) int { return 3 - slot }

// credState is the device's credentials and the slot of the CONNECT being attempted.
type credState struct {
	mu     sync.Mutex
	c      Credentials
	trying int // the slot of the CONNECT in progress (or of the current connection)
	// authRefused: the last CONNECT was refused as not authorized, so the next one tries the other slot.
	authRefused bool
	conn        net.Conn
	// dropAfterReply asks callMethod to drop the connection once the rotation's answer is sent, so that the
	// device reconnects with its new secret.
	dropAfterReply bool
}

// initCredentials sets the starting state from the configuration.
func (d *Device) initCredentials() {
	c := Credentials{Secret: d.cfg.Secret, Secret2: d.cfg.Secret2, Cert: d.cfg.ClientCertificate, Cert2: d.cfg.ClientCertificate2, Slot: d.cfg.Slot,
		PendingKey: d.cfg.PendingKey}
	if c.Slot != 1 && c.Slot != 2 {
		c.Slot = 1
		if !c.has(1) && c.has(2) {
			c.Slot = 2
		}
	}
	d.creds.c, d.creds.trying = c, c.Slot
}

// Credentials returns the device's current credentials (what SaveCredentials last stored).
func (d *Device) Credentials() Credentials {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	return d.creds.c
}

// ConnectedSlot is the secret slot the current (or last) connection presented.
func (d *Device) ConnectedSlot() int {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	return d.creds.trying
}

// password is what the CONNECT being sent presents (paho's credentials provider).
func (d *Device) password() (string, string) {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	return d.cfg.ID, d.creds.c.secret(d.creds.trying)
}

// fallBack switches the next CONNECT to the other slot, if it holds a secret; it reports whether it did.
func (d *Device) fallBack() bool {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	if o := other(d.creds.trying); d.creds.c.has(o) {
		d.creds.trying = o
		return true
	}
	return false
}

// nextReconnect picks the slot of a reconnect attempt: the preferred slot, or the other one after a CONNECT
// refused as not authorized, so that a device whose new credential was replaced by a retried rotation step
// (or never reached the registry) comes back with the one that still works. Any other failure (a busy
// gateway, a lost connection) keeps the preferred slot: falling back then would connect with the old
// credential, which the rotation leaves valid until the new one is confirmed, and the device would keep
// presenting it (docs/architecture.md, "Credential rotation").
func (d *Device) nextReconnect() {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	slot := d.creds.c.Slot
	if d.creds.authRefused && d.creds.c.has(other(d.creds.trying)) {
		slot = other(d.creds.trying)
	}
	d.creds.authRefused = false
	d.creds.trying = slot
}

// refusedAuth notes a CONNECT refused as not authorized (paho's connection notification).
func (d *Device) refusedAuth() {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	d.creds.authRefused = true
}

// connected notes a successful CONNECT: the slot that worked becomes the preferred one.
func (d *Device) connected() {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	d.creds.authRefused = false
	d.creds.c.Slot = d.creds.trying
}

// openConnection dials a broker as paho does for tcp:// and TLS URLs, keeping the connection so that a
// rotation can drop it: paho has no way to reconnect on request but keeps reconnecting (with the credentials
// provider's answer) after a connection it did not close ends.
func (d *Device) openConnection(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	var conn net.Conn
	var err error
	switch uri.Scheme {
	case "tcp", "mqtt":
		conn, err = dialer.Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		if d.cfg.TLS == nil {
			return nil, fmt.Errorf("device: %s is a TLS URL but the device has no TLS configuration", uri)
		}
		conn, err = d.cfg.TLS.dial(d, dialer, uri.Host)
	default:
		return nil, fmt.Errorf("device: unsupported broker URL scheme %q", uri.Scheme)
	}
	if err != nil {
		return nil, err
	}
	// The PINGREQs and the PINGRESP deadline are the device's, not paho's (keepalive.go).
	conn = newLiveConn(conn, d.cfg.PingTimeout, d.cfg.KeepAlive)
	d.creds.mu.Lock()
	d.creds.conn = conn
	d.creds.mu.Unlock()
	return conn, nil
}

// dropConnection ends the current network connection; paho reconnects.
func (d *Device) dropConnection() {
	d.creds.mu.Lock()
	c := d.creds.conn
	d.creds.mu.Unlock()
	if c != nil {
		// Not Close: paho takes a read on a closed connection for its own disconnect and does not
		// reconnect; a read that times out is a lost connection.
		_ = c.SetReadDeadline(time.Now())
	}
}

// rotateCredentials is the rotateCredentials method (protocol.MethodRotateCredentials): the new secret is
// stored with SaveCredentials before the answer, and the connection dropped after it, so that the device
// comes back presenting the new secret (and, should the registry not know it, the old one).
func (d *Device) rotateCredentials(ctx context.Context, payload []byte) (any, error) {
	r, err := protocol.ParseRotateCredentials(payload)
	if err != nil {
		return nil, &MethodError{Status: 400, Message: err.Error()}
	}
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	next := d.creds.c
	if r.Slot == 1 {
		next.Secret = r.Secret
	} else {
		next.Secret2 = r.Secret
	}
	next.Slot = r.Slot
	if err := d.cfg.SaveCredentials(ctx, next); err != nil {
		return nil, &MethodError{Status: 500, Message: "storing the new secret failed; keeping the old one: " + err.Error()}
	}
	d.creds.c = next
	d.creds.dropAfterReply = true
	return nil, nil
}

// hasCertificate reports whether the device holds a client certificate in either slot.
func (d *Device) hasCertificate() bool {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	return d.creds.c.Cert != nil || d.creds.c.Cert2 != nil
}

// clientCertificate is what the TLS handshake being made presents (TLSClient.clientCertificate): the
// certificate of the slot of the CONNECT being attempted, or none — also when the server does not accept
// its issuer, as crypto/tls does with tls.Config.Certificates.
func (d *Device) clientCertificate(info *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	if c := d.creds.c.cert(d.creds.trying); c != nil && info.SupportsCertificate(c) == nil {
		return c, nil
	}
	return &tls.Certificate{}, nil // none: the device authenticates with its secret
}

// renewCertificate is the renewCertificate method (protocol.MethodRenewCertificate): a new key pair is
// generated here and stored, as the pending key, with SaveCredentials before its certificate signing request
// is answered, so that the certificate the worker signs for it can be installed even after a restart; the
// key never leaves the device (docs/architecture.md, "Certificate renewal"). The request replaces any older
// pending key: a certificate for that one is refused from now on.
func (d *Device) renewCertificate(ctx context.Context, _ []byte) (any, error) {
	key, csr, err := pki.NewDeviceKey(d.cfg.ID)
	if err != nil {
		return nil, &MethodError{Status: 500, Message: err.Error()}
	}
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	next := d.creds.c
	next.PendingKey = key
	if err := d.cfg.SaveCredentials(ctx, next); err != nil {
		return nil, &MethodError{Status: 500, Message: "storing the new key failed; keeping the old certificate: " + err.Error()}
	}
	d.creds.c = next
	return protocol.RenewCertificateAnswer{CSR: string(csr)}, nil
}

// installCertificate is the installCertificate method (protocol.MethodInstallCertificate): the certificate
// must be for the pending key (the newest request's, stored: it survives a restart); it is stored with that
// key in the slot named, and the pending key cleared, with SaveCredentials, before the answer, and the
// connection dropped after it, so that the device comes back presenting the new certificate (and, should the
// registry not know it, the old one).
func (d *Device) installCertificate(ctx context.Context, payload []byte) (any, error) {
	r, err := protocol.ParseInstallCertificate(payload)
	if err != nil {
		return nil, &MethodError{Status: 400, Message: err.Error()}
	}
	d.creds.mu.Lock()
	defer d.creds.mu.Unlock()
	if d.creds.c.PendingKey == nil {
		return nil, &MethodError{Status: 409, Message: "no certificate request is pending on this device; keeping the old certificate"}
	}
	// KeyPair checks that the certificate's public key is the pending key's.
	pair, err := pki.KeyPair(d.cfg.ID, []byte(r.Certificate), d.creds.c.PendingKey)
	if err != nil {
		return nil, &MethodError{Status: 409, Message: err.Error() + "; keeping the old certificate"}
	}
	next := d.creds.c
	if r.Slot == 1 {
		next.Cert = pair
	} else {
		next.Cert2 = pair
	}
	next.Slot = r.Slot
	next.PendingKey = nil // installed: it lives on as the slot's key
	if err := d.cfg.SaveCredentials(ctx, next); err != nil {
		return nil, &MethodError{Status: 500, Message: "storing the new certificate failed; keeping the old one: " + err.Error()}
	}
	d.creds.c = next
	d.creds.dropAfterReply = true
	return nil, nil
}

// afterReply runs after a method's answer has been published.
func (d *Device) afterReply(name string) {
	if name != protocol.MethodRotateCredentials && name != protocol.MethodInstallCertificate {
		return
	}
	d.creds.mu.Lock()
	drop := d.creds.dropAfterReply
	d.creds.dropAfterReply = false
	d.creds.mu.Unlock()
	if drop {
		d.dropConnection()
	}
}

// errNoCredentials is the configuration error of a device with neither a secret nor a certificate.
var errNoCredentials = errors.New("device: a secret or a client certificate is required")
