package simulator

import (
	"testing"
	"time"
)

// A report's retries wait a random time below a bound that doubles from firstRetryWait to maxRetryWait, with
// no floor (full jitter), so that devices whose reports timed out together do not retry together.
func TestRetryWaitIsFullJitterBelowADoublingCappedBound(t *testing.T) {
	for _, c := range []struct {
		n     int
		bound time.Duration
	}{{1, firstRetryWait}, {2, 2 * firstRetryWait}, {3, 4 * firstRetryWait}, {5, 16 * firstRetryWait}, {6, maxRetryWait}, {100, maxRetryWait}} {
		low := 0
		for range 400 {
			w := retryWait(c.n)
			if w < 0 || w >= c.bound {
				t.Fatalf("retryWait(%d) = %s, outside [0, %s)", c.n, w, c.bound)
			}
			if w < c.bound/4 {
				low++
			}
		}
		if low == 0 {
			t.Errorf("retryWait(%d): 400 draws, none below %s: a floor, not full jitter", c.n, c.bound/4)
		}
	}
}
