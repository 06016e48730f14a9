package fleetworker

import (
	"context"
	"maps"
	"sync"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"
)

// Running counts the activities a worker runs, by type, so that a stopping worker can say what it waits
// for. Set it in Options.Running.
type Running struct {
	interceptor.WorkerInterceptorBase
	mu sync.Mutex
	n  map[string]int
}

// Snapshot returns the number of running activities of each type (types with none are left out).
func (r *Running) Snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.n)
}

// Total returns the number of running activities.
func (r *Running) Total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := 0
	for _, n := range r.n {
		t += n
	}
	return t
}

func (r *Running) add(name string, d int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[name] += d
	if r.n[name] <= 0 {
		delete(r.n, name)
	}
}

// InterceptActivity implements interceptor.WorkerInterceptor.
func (r *Running) InterceptActivity(_ context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &runningActivity{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, r: r}
}

type runningActivity struct {
	interceptor.ActivityInboundInterceptorBase
	r *Running
}

func (a *runningActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	name := activity.GetInfo(ctx).ActivityType.Name
	a.r.add(name, 1)
	defer a.r.add(name, -1)
	return a.Next.ExecuteActivity(ctx, in)
}
