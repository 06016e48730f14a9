package gateway

import (
	"testing"
	"time"
)

// A gateway whose goroutines wait for a core longer than AdmitLag refuses new CONNECTs as busy, whether the
// probe measured the lag or is itself overdue; with the lag back under the bound it admits again, up to
// AdmitPending at once.
func TestAdmissionRefusesOnSchedulingLagAndPending(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newAdmission(2, time.Second, 0)
	a.now = func() time.Time { return now }
	a.lastTick.Store(now.UnixNano())

	if r := a.enter(); r != "" {
		t.Fatalf("idle gateway refused: %s", r)
	}
	if r := a.enter(); r != "" {
		t.Fatalf("second CONNECT refused: %s", r)
	}
	if r := a.enter(); r != busyPending {
		t.Fatalf("third CONNECT with AdmitPending 2: %q, want %q", r, busyPending)
	}
	a.leave()
	a.leave()
	if got := a.pending.Load(); got != 0 {
		t.Fatalf("pending = %d after every CONNECT left", got)
	}

	// The probe ran 1.5 s late.
	a.lastLag.Store(int64(1500 * time.Millisecond))
	if r := a.enter(); r != busyLag {
		t.Fatalf("lag 1.5 s over a bound of 1 s: %q, want %q", r, busyLag)
	}
	a.lastLag.Store(int64(10 * time.Millisecond))
	if r := a.enter(); r != "" {
		t.Fatalf("lag back to 10 ms: refused %s", r)
	}
	a.leave()

	// The probe has not run for 2 s: it is starved too.
	now = now.Add(2 * time.Second)
	if r := a.enter(); r != busyLag {
		t.Fatalf("probe overdue by 1.9 s: %q, want %q", r, busyLag)
	}
	if got := a.pending.Load(); got != 0 {
		t.Fatalf("a CONNECT refused for lag holds a pending slot: %d", got)
	}
}
