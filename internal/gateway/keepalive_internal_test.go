package gateway

import (
	"math"
	"testing"
)

// mochi enforces k + k/2 whole seconds for the keep-alive it is given; the allowance must never be below
// the 1.5 k MQTT grants for the keep-alive k the client asked for.
func TestKeepAliveAllowance(t *testing.T) {
	for _, c := range []struct{ k, want uint16 }{
		{0, 0}, // no keep-alive: no deadline
		{1, 2}, // mochi alone: 1 s for the 1.5 s granted; given 2: 3 s
		{2, 2}, // 3 s, exactly 1.5 k
		{3, 4}, // 4 s for 4.5: given 4, 6 s
		{60, 60},
		{61, 62},
		{43689, 43690},
		{43690, 43690}, // 65,535 s: the most mochi's 16-bit sum can hold
		{43691, 43690}, // k + k/2 would wrap to a few hours
		{65535, 43690},
	} {
		got := keepAliveAllowance(c.k)
		if got != c.want {
			t.Errorf("keepAliveAllowance(%d) = %d, want %d", c.k, got, c.want)
		}
	}
	for k := uint16(1); k < math.MaxUint16; k++ {
		a := keepAliveAllowance(k)
		allowed := a + a/2 // as mochi computes it, in 16 bits
		if int(allowed) != int(a)+int(a)/2 {
			t.Fatalf("keep-alive %d: mochi's sum for %d wraps", k, a)
		}
		if 2*int(allowed) < 3*int(k) && allowed != math.MaxUint16 {
			t.Fatalf("keep-alive %d: mochi would allow %d s, below 1.5 × %d", k, allowed, k)
		}
	}
}
