package device

import "testing"

// TestReconnectSlotChangesOnlyAfterAnAuthRefusal: a device holding two credentials reconnects with its
// preferred one after a busy gateway or a lost connection (falling back then would present the old
// credential, which a rotation leaves valid until the new one is confirmed, and keep presenting it), and
// with the other one only after a CONNECT refused as not authorized.
func TestReconnectSlotChangesOnlyAfterAnAuthRefusal(t *testing.T) {
	d := &Device{cfg: Config{ID: "dev-1", Secret: "old", Secret2: "new", Slot: 2}}
	d.initCredentials()
	steps := []struct {
		name      string
		refused   bool // the CONNECT before this reconnect was refused as not authorized
		connected bool // ... or succeeded
		want      int
	}{
		{"after a busy refusal: the preferred slot", false, false, 2},
		{"again busy: still the preferred slot", false, false, 2},
		{"refused as not authorized: the other slot", true, false, 1},
		{"that one busy: back to the preferred slot", false, false, 2},
		{"refused again: the other slot", true, false, 1},
		{"connected with it: it becomes the preferred slot", false, true, 1},
		{"a lost connection: the new preferred slot", false, false, 1},
	}
	for _, s := range steps {
		if s.refused {
			d.refusedAuth()
		}
		if s.connected {
			d.connected()
		}
		d.nextReconnect()
		if got := d.ConnectedSlot(); got != s.want {
			t.Fatalf("%s: slot %d, want %d", s.name, got, s.want)
		}
		if _, pw := d.password(); pw != map[int]string{1: "old", 2: "new"}[s.want] {
			t.Fatalf("%s: presents %q", s.name, pw)
		}
	}

	// A device with one credential never switches.
	one := &Device{cfg: Config{ID: "dev-2", Secret: "only"}}
	one.initCredentials()
	one.refusedAuth()
	one.nextReconnect()
	if got := one.ConnectedSlot(); got != 1 {
		t.Fatalf("one credential: slot %d, want 1", got)
	}
}
