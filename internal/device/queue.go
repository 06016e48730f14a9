package device

import "sync"

// serialQueue runs functions one at a time in order on a goroutine that exists only while there is work,
// so an idle device costs no goroutine.
type serialQueue struct {
	mu      sync.Mutex
	items   []func()
	running bool
	max     int
}

func (q *serialQueue) push(f func()) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= q.max {
		return false
	}
	q.items = append(q.items, f)
	if !q.running {
		q.running = true
		go q.run()
	}
	return true
}

func (q *serialQueue) run() {
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			q.running = false
			q.items = nil
			q.mu.Unlock()
			return
		}
		f := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.mu.Unlock()
		f()
	}
}
