package gatewaytest

import (
	"sync"

	fdevice "github.com/fleetflow/fleetflow/internal/device"
)

// DesiredRecorder collects the desired updates a device receives; pass its Handle to Device.OnDesired.
type DesiredRecorder struct {
	mu      sync.Mutex
	updates []fdevice.DesiredUpdate
}

// Handle records one update (a device.DesiredHandler).
func (r *DesiredRecorder) Handle(u fdevice.DesiredUpdate) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
}

// Updates returns a copy of the updates so far, in arrival order.
func (r *DesiredRecorder) Updates() []fdevice.DesiredUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fdevice.DesiredUpdate(nil), r.updates...)
}

// Versions returns the versions of the updates so far, in arrival order.
func (r *DesiredRecorder) Versions() []int64 {
	var out []int64
	for _, u := range r.Updates() {
		out = append(out, u.Version)
	}
	return out
}
