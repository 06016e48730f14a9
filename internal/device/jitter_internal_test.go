package device

import (
	"testing"
	"time"
)

// The reconnect jitter stays below its bound and spreads: the devices of a gateway that died must not all
// pick the same wait, or they would reconnect together again, only later.
func TestReconnectJitterStaysBelowItsBoundAndSpreads(t *testing.T) {
	if got := jitter(0); got != 0 {
		t.Fatalf("jitter(0) = %s, want no wait", got)
	}
	const upTo = 10 * time.Second
	seen := map[time.Duration]bool{}
	var low, high int
	for range 1000 {
		j := jitter(upTo)
		if j < 0 || j >= upTo {
			t.Fatalf("jitter(%s) = %s, outside [0, %s)", upTo, j, upTo)
		}
		seen[j] = true
		if j < upTo/2 {
			low++
		} else {
			high++
		}
	}
	// 1,000 draws from 10^10 nanoseconds: repeats or a half left empty mean no spread at all.
	if len(seen) < 990 || low == 0 || high == 0 {
		t.Fatalf("1000 waits: %d distinct, %d in the lower half, %d in the upper: not spread", len(seen), low, high)
	}
}

// The wait before a reconnect attempt: below the spread for the first attempt after a loss, then below the
// spread plus a part that doubles from 1 s per failed attempt up to the cap; and full jitter — no floor, so
// that devices refused together do not come back together after a fixed pause.
func TestReconnectWaitIsFullJitterBelowADoublingCappedBound(t *testing.T) {
	const limit = 30 * time.Second
	for _, c := range []struct {
		failed int64
		spread time.Duration
		bound  time.Duration
	}{
		{0, 0, 0},
		{0, 5 * time.Second, 5 * time.Second},
		{1, 0, time.Second},
		{2, 0, 2 * time.Second},
		{3, 0, 4 * time.Second},
		{5, 0, 16 * time.Second},
		{6, 0, limit},
		{60, 0, limit}, // no overflow of the doubling
		{2, 10 * time.Second, 12 * time.Second},
		{5, 10 * time.Second, 26 * time.Second},
		{9, 10 * time.Second, 40 * time.Second},
		{9, time.Minute, 90 * time.Second}, // a spread above the cap is kept
	} {
		var low int
		for range 400 {
			w := reconnectWait(c.failed, c.spread, limit)
			if c.bound == 0 {
				if w != 0 {
					t.Fatalf("reconnectWait(%d, %s) = %s, want no wait", c.failed, c.spread, w)
				}
				continue
			}
			if w < 0 || w >= c.bound {
				t.Fatalf("reconnectWait(%d, %s) = %s, outside [0, %s)", c.failed, c.spread, w, c.bound)
			}
			if w < c.bound/4 {
				low++
			}
		}
		// Full jitter: about a quarter of the draws fall in the lowest quarter of the range (none would
		// with a floor at half the bound, as paho's own doubling gives).
		if c.bound > 0 && low == 0 {
			t.Errorf("reconnectWait(%d, %s): 400 draws, none below %s: a floor, not full jitter", c.failed, c.spread, c.bound/4)
		}
	}
}

// The backoff starts afresh only after a connection that lasted: one lost before its sync, or soon after
// it (a session taken over by a clone of the device, a gateway that drops what it accepts), counts as one
// more failed attempt, so such a loop backs off instead of reconnecting as fast as it can.
func TestFailuresAfterLoss(t *testing.T) {
	for _, c := range []struct {
		name     string
		failures int64
		synced   bool
		lived    time.Duration
		want     int64
	}{
		{"lost before its sync", 0, false, time.Hour, 1},
		{"lost before its sync, after failures", 3, false, 0, 4},
		{"taken over right after its sync", 0, true, 200 * time.Millisecond, 1},
		{"a ping-pong of takeovers keeps growing", 5, true, time.Second, 6},
		{"just short of stable", 2, true, stableSession - time.Millisecond, 3},
		{"a connection that lasted", 7, true, stableSession, 0},
		{"an hour-long session", 0, true, time.Hour, 0},
	} {
		if got := failuresAfterLoss(c.failures, c.synced, c.lived); got != c.want {
			t.Errorf("%s: failuresAfterLoss(%d, %v, %s) = %d, want %d", c.name, c.failures, c.synced, c.lived, got, c.want)
		}
	}
}
