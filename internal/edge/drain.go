package edge

import (
	"net"
	"sync"
	"time"
)

// drain lets Stop return only once the edge is really stopped. Caddy's
// own stop returns as soon as its servers have begun shutting down (it
// waits for the rest only when the process exits), so without this the
// ports could still accept, and requests still run, after Stop: while the
// manager closes the store under them.
type drain struct {
	mu        sync.Mutex
	listeners int // open listeners
	requests  int // requests in the edge's handler
	idle      chan struct{}
}

func (d *drain) change(listeners, requests int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.listeners += listeners
	d.requests += requests
	if d.listeners == 0 && d.requests == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
}

// wait blocks until no listener is open and no request runs, or timeout;
// false on timeout.
func (d *drain) wait(timeout time.Duration) bool {
	d.mu.Lock()
	if d.listeners == 0 && d.requests == 0 {
		d.mu.Unlock()
		return true
	}
	if d.idle == nil {
		d.idle = make(chan struct{})
	}
	idle := d.idle
	d.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// listen counts ln as open until it is closed.
func (d *drain) listen(ln net.Listener) net.Listener {
	d.change(1, 0)
	return &drainListener{Listener: ln, d: d}
}

type drainListener struct {
	net.Listener
	d    *drain
	once sync.Once
}

func (l *drainListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.d.change(-1, 0) })
	return err
}
