package gateway

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/protocol"
)

// hook plugs the gateway into mochi. mochi denies everything without an auth hook, so this one hook is the
// whole policy: who may connect, what they may touch, and what their connections mean for the registry.
type hook struct {
	mqtt.HookBase
	g *Gateway
}

// ID names the hook in mochi's logs.
func (h *hook) ID() string { return "fleetflow-registry" }

// Provides tells mochi which hook methods this hook implements, so it calls no others.
func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnWill, mqtt.OnPacketEncode:
		return true
	}
	return false
}

// OnConnect runs before authentication and decides it (see authenticate), so that a CONNECT the gateway
// cannot serve in time is answered "server unavailable" at once rather than refused as bad credentials or
// left to time out (docs/architecture.md, "Admission control: refusing what cannot be served"); the decision
// waits in g.decided for OnConnectAuthenticate, which mochi calls next.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	g := h.g
	// mochi reads the keep-alive from here when it sets the connection's deadline, right after this hook.
	cl.State.Keepalive = keepAliveAllowance(pk.Connect.Keepalive)
	if string(pk.Connect.Username) == ServiceUsername {
		return nil // refused by OnConnectAuthenticate
	}
	if reason := g.admit.enter(); reason != "" {
		return g.refuseBusy(cl, reason, "pending", g.admit.pending.Load(), "lag", g.admit.lag())
	}
	ok, busy, err := h.authenticate(cl, pk, g.admit.wait)
	g.admit.leave()
	if busy != "" {
		return g.refuseBusy(cl, busy, "err", err)
	}
	g.decided.Store(cl, ok)
	return nil
}

// OnConnectAuthenticate returns what OnConnect decided; a caller that skipped OnConnect gets the decision
// made here, a busy gateway refusing like bad credentials.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if user := string(pk.Connect.Username); user == ServiceUsername {
		return h.authService(cl, pk)
	}
	if ok, found := h.g.decided.LoadAndDelete(cl); found {
		return ok.(bool)
	}
	ok, busy, _ := h.authenticate(cl, pk, 0)
	if busy != "" {
		h.g.admit.count(busy)
	}
	return ok && busy == ""
}

// authenticate admits a device whose client id, username and registry id agree, whose status is
// active and which proves who it is: with the client certificate the TLS handshake verified against the fleet
// CA, when it presented one (its subject's common name must be the id and its fingerprint the registry's; the
// password is then not looked at), or else with a password that matches one of its two secret slots.
// fleetflow's services no longer log in over MQTT (they reach devices over NATS): authService refuses them.
// busy is set, with the error behind it, when the gateway could not decide in time or the registry failed
// (a refusal that is not the device's fault); wait bounds the registry lookup (0: the cache's timeout).
func (h *hook) authenticate(cl *mqtt.Client, pk packets.Packet, wait time.Duration) (ok bool, busy string, _ error) {
	g := h.g
	user := string(pk.Connect.Username)
	id := cl.ID
	// Refusals for what the client sent (an unknown id, a wrong secret or certificate, a malformed CONNECT)
	// count against its address (docs/architecture.md, "Abuse: floods of CONNECTs"). A disabled or retired
	// device with its right credentials does not: such devices retry by design, often many behind one
	// address (a simulator, a NAT), and they must not lock out their neighbours. Nor does the gateway's own
	// trouble (a failed or shed lookup), which refuses the CONNECT as busy.
	refuseOnly := func(reason string, attrs ...any) (bool, string, error) {
		g.c.authFailures.Add(1)
		g.log.Debug("connect refused", append([]any{"client", id, "remote", cl.Net.Remote, "reason", reason}, attrs...)...)
		return false, "", nil
	}
	refuse := func(reason string, attrs ...any) (bool, string, error) {
		g.failures.failed(cl.Net.Remote)
		return refuseOnly(reason, attrs...)
	}
	if !g.failures.allowed(cl.Net.Remote) {
		g.c.authRateLimited.Add(1)
		return refuseOnly("too many failed CONNECTs from this address")
	}
	if user != id {
		return refuse("client id and username differ")
	}
	if !protocol.ValidDeviceID(id) {
		return refuse("invalid device id")
	}
	if id == mqtt.InlineClientId {
		// mochi's own in-process client has this id; a device taking it over would cut off ingest.
		return refuse("reserved client id")
	}
	// A presented certificate is the device's credential, whatever else it sends: one that names another
	// device is refused rather than passed over for the password (docs/architecture.md, "Device certificates").
	cert := clientCert(cl)
	if cert != nil && cert.Subject.CommonName != id {
		return refuse("certificate of another device", "subject", cert.Subject.CommonName)
	}
	if cert == nil && len(pk.Connect.Password) == 0 {
		return refuse("no password")
	}
	if pk.Connect.WillFlag && !protocol.DeviceMayUse(id, pk.Connect.WillTopic) {
		g.c.aclDenials.Add(1)
		return refuse("will topic outside the device's topics", "topic", pk.Connect.WillTopic)
	}
	a, cached, err := g.auth.getWithin(id, wait)
	if errors.Is(err, fleet.ErrNotFound) && g.cfg.Enroller != nil {
		var reason string
		a, reason, err = g.enroll(id, string(pk.Connect.Password), cert)
		if reason != "" {
			return refuseOnly("enrollment refused", "reason", reason)
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, fleet.ErrNotFound):
			return refuse("unknown device")
		case errors.Is(err, errLookupsBusy):
			return false, busyShed, err
		case errors.Is(err, errLookupSlow):
			return false, busyWait, err
		}
		g.c.storeErrors.Add(1)
		g.log.Warn("connect refused: registry lookup failed", "client", id, "err", err)
		return false, busyRegistry, err
	}
	if a.Status != fleet.StatusActive {
		return refuseOnly("device not active", "status", a.Status)
	}
	slot, mismatch := credentialSlot(a, cert, string(pk.Connect.Password))
	if mismatch != "" && cached {
		// A record from the cache may predate a credential the registry has just staged: a rotation stages
		// the new secret or certificate, then delivers it, and the device reconnects with it at once,
		// possibly before the registry's change notice has reached this gateway's listener (late on a loaded
		// machine). Refused here, the device would fall back to its old credential and miss the rotation's
		// grace. So a mismatch against a cached record is decided again on a fresh one; the failure limiter
		// above bounds what guessing can cost (docs/architecture.md, "Credential rotation").
		// A fresh read that fails or is not back within the admission wait leaves the cached verdict: a
		// wrong credential is refused as such however busy the registry, and the read goes on to refill
		// the cache for the device's next attempt.
		g.auth.invalidate(id)
		g.c.authRefetched.Add(1)
		if fresh, _, err := g.auth.getWithin(id, wait); err == nil {
			if fresh.Status != fleet.StatusActive {
				return refuseOnly("device not active", "status", fresh.Status)
			}
			a = fresh
			slot, mismatch = credentialSlot(a, cert, string(pk.Connect.Password))
		}
	}
	if mismatch != "" {
		return refuse(mismatch)
	}
	// Expiry is checked after the credentials, against the clock of this CONNECT whether the record came
	// from the cache or not, so that a cached record never outlives its expiry; only a device that proved
	// who it is learns, and has recorded on its timeline, that its credentials expired (docs/architecture.md,
	// "Credential rotation"). A certificate's own end is an expiry too, enforced here rather than in the TLS
	// handshake (pki.RequestClientCerts), so that an expired certificate is refused, counted and recorded
	// exactly like an expired secret, and the device moves to its other slot (docs/architecture.md,
	// "Certificate renewal").
	expires := a.ExpiresAt
	if cert != nil && (expires.IsZero() || cert.NotAfter.Before(expires)) {
		expires = cert.NotAfter
	}
	if now := g.auth.now(); !expires.IsZero() && !now.Before(expires) {
		g.c.authExpired.Add(1)
		g.noteExpired(id, expires, now)
		return refuseOnly("credentials expired", "expired", expires)
	}
	// The session number is taken here, not when the session starts, so that a registry that cannot
	// hand one out refuses the CONNECT like a failed lookup instead of admitting an unnumbered session.
	num, err := g.nums.next()
	if err != nil {
		g.c.storeErrors.Add(1)
		g.log.Warn("connect refused: no session number from the registry", "client", id, "err", err)
		return false, busyRegistry, err
	}
	g.nums.hold(cl, num, slot)
	return true, "", nil
}

// enroll registers an unknown id whose password is derived from an enrollment group's key, or whose client
// certificate an x509 group's CA signed, and returns its new record (docs/architecture.md, "Zero-touch enrollment"); fleet.ErrNotFound when the password matches no
// group, and a reason when a group matched but refused the device.
// credentialSlot says which of a's credentials the CONNECT presents: a certificate in either certificate
// slot (a renewal registers the new certificate beside the old one until the device has connected with it:
// docs/architecture.md, "Certificate renewal"; slot 0), else a password matching secret slot 1 or 2; or why
// none matches.
func credentialSlot(a fleet.DeviceAuth, cert *x509.Certificate, password string) (slot int, mismatch string) {
	if cert != nil {
		if !pki.FingerprintMatches(cert, a.CertFingerprint) && !pki.FingerprintMatches(cert, a.Cert2Fingerprint) {
			return 0, "certificate not registered"
		}
		return 0, ""
	}
	switch {
	case creds.Matches(password, a.Secret1Hash):
		return 1, ""
	case creds.Matches(password, a.Secret2Hash):
		return 2, ""
	}
	return 0, "wrong secret"
}

func (g *Gateway) enroll(id, password string, cert *x509.Certificate) (fleet.DeviceAuth, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.EnrollTimeout)
	defer cancel()
	var ok bool
	var reason string
	var err error
	if cert != nil {
		ok, reason, err = g.cfg.Enroller.EnrollCert(ctx, id, cert)
	} else {
		ok, reason, err = g.cfg.Enroller.Enroll(ctx, id, password)
	}
	if err != nil {
		g.c.enrollRefused.Add(1)
		g.log.Warn("connect refused: registration failed", "client", id, "err", err)
		return fleet.DeviceAuth{}, "registration failed", nil
	}
	if reason != "" {
		g.c.enrollRefused.Add(1)
		return fleet.DeviceAuth{}, reason, nil
	}
	if !ok {
		return fleet.DeviceAuth{}, "", fleet.ErrNotFound
	}
	g.c.enrolled.Add(1)
	// The registry's insert notice clears the negative cache too, but it may not have arrived yet.
	g.auth.invalidate(id)
	a, _, err := g.auth.get(id)
	return a, "", err
}

// authService refuses the MQTT login fleetflow's services used before they moved to NATS (docs/architecture.md,
// "Scale-out: gateways over NATS"): a worker or CLI still configured for it is told so in the log.
func (h *hook) authService(cl *mqtt.Client, _ packets.Packet) bool {
	h.g.c.authFailures.Add(1)
	h.g.log.Debug("service connect refused: services reach devices over NATS now (FLEETFLOW_NATS_URL)", "client", cl.ID, "remote", cl.Net.Remote)
	return false
}

// OnACLCheck confines devices to devices/{id}/…. It sees publish topics, subscription filters (including
// $share prefixes) and, on delivery, topic names.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	ok := protocol.DeviceMayUse(cl.ID, topic)
	if !ok {
		h.g.c.aclDenials.Add(1)
		h.g.log.Debug("acl denied", "client", cl.ID, "topic", topic, "write", write)
	}
	return ok
}

// OnSessionEstablish runs after a successful CONNECT, just before mochi looks for an existing session with the
// same client id. For clean sessions it retires that session itself and waits until mochi has cleaned it up:
// mochi v2.7.9 cleans up a dropped connection on that connection's goroutine, keyed by client id, unless
// its takeover flag is set; when that check runs just before the new connection sets the flag (a device
// reconnecting while its old connection is still being torn down), the clean-up deletes the new
// connection's client entry, leaving a connected device that never receives anything. Persistent sessions
// are left to mochi's takeover, which must hand their state over.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	g := h.g
	old, ok := g.server.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	s := g.sessions.known(old)
	if s != nil {
		g.renumber(cl, s.num)
	}
	if !cleanSession(old) {
		return
	}
	if s == nil {
		// Its connection never got going (mochi leaves such entries behind when the CONNACK
		// cannot be written): nothing of it runs concurrently with us, and mochi's takeover
		// replaces the entry.
		return
	}
	// The old connection's LWT is published after this one's birth; it must not be retained.
	s.superseded.Store(true)
	_ = g.server.DisconnectClient(old, packets.ErrSessionTakenOver) // 3.1.1: closed without it (OnPacketEncode)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if cur, ok := g.server.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
		time.Sleep(time.Millisecond)
	}
	g.log.Warn("previous connection was not cleaned up in time; relying on mochi's takeover", "client", cl.ID)
}

// renumber gives cl a new session number when the one it was given at authentication is not above prev,
// the number of the session it takes over: two CONNECTs of one device can be authenticated in one order and
// take their sessions in the other, and the registry must see the later session as the newer one. This
// costs a registry round trip, but only in that race.
func (g *Gateway) renumber(cl *mqtt.Client, prev int64) {
	num, slot, ok := g.nums.take(cl)
	if !ok || num > prev {
		if ok {
			g.nums.hold(cl, num, slot)
		}
		return
	}
	num, err := g.nums.next()
	if err != nil {
		g.c.storeErrors.Add(1)
		g.log.Warn("closing connection: no session number from the registry", "client", cl.ID, "err", err)
		cl.Stop(fmt.Errorf("session number: %w", err))
		return
	}
	g.nums.hold(cl, num, slot)
}

// cleanSession reports whether mochi discards cl's state when its connection ends.
func cleanSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// OnSessionEstablished records a device's new session and attaches it to the bus (which ends an older
// session of the device on another gateway).
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	g := h.g
	num, slot, ok := g.nums.take(cl)
	if !ok {
		// Every device CONNECT is numbered when it is authenticated; without one it would not be ordered
		// against the device's other sessions, so it is not kept.
		g.log.Error("device session without a session number; closing it", "client", cl.ID)
		cl.Stop(errors.New("no session number"))
		return
	}
	s := &session{id: cl.ID, cl: cl, num: num, digest: creds.Digest(string(pk.Connect.Password))}
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 1 {
		s.will = cl.Properties.Will
	}
	g.sessions.add(s)
	g.c.connected.Add(1)
	g.c.connects.Add(1)
	up := fleet.ConnEvent{DeviceID: s.id, Kind: fleet.ConnUp, Session: s.num, At: time.Now(), Slot: slot}
	if slot != 0 {
		up.Digest = s.digest
	} else if cert := clientCert(cl); cert != nil {
		// A certificate session is recorded with slot 0 and the certificate's fingerprint, which is what a
		// renewal waits for (docs/architecture.md, "Certificate renewal").
		up.Digest = pki.Fingerprint(cert)
	}
	g.events.add(up)
	g.attach(s)
	// If the record was invalidated between the auth check and now, the change notification found no
	// session to re-check; do it here so a revocation racing the CONNECT is not lost.
	if !g.auth.has(s.id) {
		g.recheck.add(s.id)
	}
}

// OnDisconnect records the end of a device session and, if it was the device's current one, detaches the
// device from the bus.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	g := h.g
	s, current := g.sessions.remove(cl, expire)
	if s != nil {
		if current {
			g.detach(s.id)
		}
		g.c.connected.Add(-1)
		g.events.add(fleet.ConnEvent{DeviceID: s.id, Kind: fleet.ConnDown, Session: s.num, At: time.Now()})
		// mochi publishes the LWT only when the read loop failed; when the server closed the
		// connection (kick, takeover) between two packets the loop ends cleanly and the LWT is
		// skipped. Only a DISCONNECT from the device itself may skip it.
		if err == nil && s.will.TopicName != "" && !errors.Is(cl.StopCause(), packets.CodeDisconnect) {
			w := h.rewriteWill(s, s.will)
			if perr := g.server.Publish(w.TopicName, w.Payload, w.Retain, w.Qos); perr != nil {
				g.log.Warn("publishing LWT failed", "device", s.id, "err", perr)
			}
		}
	}
	if testAfterDisconnect != nil {
		testAfterDisconnect()
	}
}

// OnPacketEncode keeps server DISCONNECT packets away from MQTT 3.1.1 clients. MQTT 3.1.1 has DISCONNECT
// only from client to server: a client that receives one reports a protocol error (mosquitto's clients say
// "a network protocol error"; paho, when it comes before its CONNACK, "non-CONNACK first packet received"),
// so a 3.1.1 connection the server ends must simply be closed. mochi v2.7.9 writes one to every client it
// disconnects, whatever its version: on takeover (Server.inheritClientSession), on a denied QoS>0 publish,
// on shutdown, and on every Server.DisconnectClient. This hook runs inside Client.WritePacket, after the
// closed-connection check and before the write: stopping the client here closes the network connection,
// so the write that follows fails and nothing reaches the client. The stop cause is rebuilt from the
// packet: for the codes mochi and the gateway disconnect with (all ≥ 0x80, whose reason string the packet
// carries) it equals the one DisconnectClient records right after, so hook.OnDisconnect's LWT rule sees the
// same cause. MQTT 5 clients get the packet with its reason code (docs/architecture.md, "The device
// protocol").
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Disconnect && cl.Properties.ProtocolVersion < 5 && !cl.Net.Inline {
		cl.Stop(packets.Code{Code: pk.ReasonCode, Reason: pk.Properties.ReasonString})
	}
	return pk
}

// testAfterDisconnect lets a test widen the window between this hook and mochi's own clean-up of the
// connection, which follows it on the same goroutine.
var testAfterDisconnect func()

// OnPublish keeps the broker's retained store to one small message per device: only devices/{id}/state
// may be retained by a device, so a device cannot park arbitrary data in gateway memory.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain && !cl.Net.Inline && pk.TopicName != protocol.StateTopic(cl.ID) {
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// OnWill applies the retain rule to wills and, for a device that was retired or deleted, turns its LWT into
// an empty retained message, which clears its state topic instead of leaving a ghost behind.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	s := h.g.sessions.forClient(cl)
	if s == nil {
		if will.TopicName != protocol.StateTopic(cl.ID) {
			will.Retain = false
		}
		return will, nil
	}
	return h.rewriteWill(s, will), nil
}

func (h *hook) rewriteWill(s *session, will mqtt.Will) mqtt.Will {
	state := protocol.StateTopic(s.id)
	if s.purge.Load() {
		will.TopicName, will.Payload, will.Retain = state, nil, true
		return will
	}
	if will.Retain && will.TopicName != state {
		will.Retain = false
	}
	if s.superseded.Load() {
		// Still delivered live (consumers ignore its older session number) but not retained over
		// the newer connection's birth.
		will.Retain = false
	}
	return will
}

// clientCert returns the client certificate cl's TLS handshake verified against the fleet CA, or nil (a
// plaintext connection, or none presented). mochi keeps the accepted net.Conn in cl.Net.Conn, which for the
// TLS listener is the *tls.Conn; the handshake is complete by the time the CONNECT has been read from it.
func clientCert(cl *mqtt.Client) *x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	return pki.VerifiedClientCert(tc.ConnectionState())
}

// sessionValid reports whether a live session still matches the device's current record: a session
// established with a certificate by its fingerprint, one established with a secret by its digest.
func sessionValid(s *session, a fleet.DeviceAuth) bool {
	if a.Status != fleet.StatusActive {
		return false
	}
	if s.cl != nil {
		if cert := clientCert(s.cl); cert != nil {
			return pki.FingerprintMatches(cert, a.CertFingerprint) || pki.FingerprintMatches(cert, a.Cert2Fingerprint)
		}
	}
	match := func(h []byte) bool {
		return len(h) == len(s.digest) && subtle.ConstantTimeCompare(h, s.digest) == 1
	}
	return match(a.Secret1Hash) || match(a.Secret2Hash)
}

// keepAliveAllowance is the keep-alive mochi is told to enforce for a client that asked for k seconds, so
// that the connection lives at least the one and a half times k that MQTT grants ([MQTT-3.1.2-24]): mochi
// allows k + k/2 in whole seconds, which for an odd k is half a second short — a client with a keep-alive
// of 1 s was dropped after 1 s of silence, before its PINGREQ (paho sends it once 1 s has passed since its
// last packet, checking every quarter of the keep-alive) could arrive, and then again on every reconnect
// (docs/architecture.md, "Keep-alive: a late PINGRESP is not a dead connection"). An odd k is rounded up to
// the next even value, whose allowance is a whole second above the 1.5 k; nothing is told to the client.
// mochi also sums in 16 bits, so a keep-alive above maxKeepAliveAllowance would wrap to a short deadline:
// those get the longest deadline mochi can set, 65,535 s (18 h).
func keepAliveAllowance(k uint16) uint16 {
	if k >= maxKeepAliveAllowance {
		return maxKeepAliveAllowance
	}
	if k%2 == 1 {
		k++
	}
	return k
}

// maxKeepAliveAllowance is the largest keep-alive whose k + k/2 fits mochi's 16 bits.
const maxKeepAliveAllowance = math.MaxUint16 / 3 * 2
