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
