package edge

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Upstream health. Caddy keeps none for dynamic upstreams (it forgets each
// request's upstream when the request ends: health is the dynamic source's
// job), so the edge keeps its own, per guest address:
//   - passive: a request that could not reach its guest port within the
//     retry window marks the address down;
//   - active: a sandbox that starts has each of its ports dialled once, and
//     an address that is down is dialled again and again (backing off to
//     probeMax) until it accepts, which marks it up.
//
// Every check and probe runs for one sandbox: forgetting the sandbox (it
// stopped, was destroyed or restarted) cancels them at once, dials in flight
// included, so none outlives it or marks its reused address down later.
//
// A request for a down address does not dial the guest: it waits for the
// probe to find the port open (a request resets the probe's back-off, so a
// dev server that just started answers within probeMin) for at most the
// retry window, then gets the "starting" page. Probing stops when nobody
// has asked for the address for probeIdle, or the sandbox stops; waiting
// requests then try the guest themselves, and its health is unknown again.
type health struct {
	dial DialFunc

	// Tests shorten these.
	probeMin, probeMax, probeIdle, probeTimeout time.Duration
	now                                         func() time.Time

	down sync.Map // dial address -> *probe

	mu     sync.Mutex
	ctx    context.Context // set while the edge runs; ends its probes
	wg     *sync.WaitGroup
	scopes map[string]scope // sandbox id -> its checks' and probes' context
}

type scope struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// probe is a down address and the goroutine dialling it.
type probe struct {
	wanted atomic.Int64  // unix nanoseconds of the last request for it
	poke   chan struct{} // a request waits: probe again soon
	done   chan struct{} // closed when probing ends, whatever the reason
}

func newProbe(now time.Time) *probe {
	p := &probe{poke: make(chan struct{}, 1), done: make(chan struct{})}
	p.wanted.Store(now.UnixNano())
	return p
}

// await waits for the probe to end (the port opened, or it is no longer
// tracked) for at most d; false means it is still down.
func (p *probe) await(ctx context.Context, d time.Duration) bool {
	select {
	case p.poke <- struct{}{}:
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func newHealth(dial DialFunc, now func() time.Time) *health {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return &health{dial: dial, now: now,
		probeMin: 100 * time.Millisecond, probeMax: time.Second, probeIdle: 30 * time.Second, probeTimeout: time.Second}
}

// start lets probes run until ctx ends; wg counts them.
func (h *health) start(ctx context.Context, wg *sync.WaitGroup) {
	h.mu.Lock()
	h.ctx, h.wg = ctx, wg
	h.scopes = map[string]scope{}
	h.mu.Unlock()
}

// halt refuses new probes; call it before ending the context given to
// start, so no probe is added to the wait group while the edge waits on it.
func (h *health) halt() {
	h.mu.Lock()
	h.ctx, h.wg = nil, nil
	h.scopes = nil
	h.mu.Unlock()
}

// forgetAll drops every address, once the probes have ended.
func (h *health) forgetAll() { h.down.Clear() }

// downProbe returns the probe of addr when it is down, else nil.
func (h *health) downProbe(addr string) *probe {
	v, ok := h.down.Load(addr)
	if !ok {
		return nil
	}
	p := v.(*probe)
	p.wanted.Store(h.now().UnixNano())
	return p
}

// isDown reports whether addr is tracked as down.
func (h *health) isDown(addr string) bool { _, ok := h.down.Load(addr); return ok }

// markDown records that addr, a port of sandbox id, does not accept
// connections and probes it until it does.
func (h *health) markDown(id, addr string) {
	p := newProbe(h.now())
	if _, loaded := h.down.LoadOrStore(addr, p); loaded {
		return
	}
	if !h.spawn(id, func(ctx context.Context) { h.probe(ctx, addr, p) }) {
		h.down.CompareAndDelete(addr, p)
		close(p.done)
	}
}

// check dials each address of sandbox id once, now, and marks the ones
// that refuse down: a guest that just booted is usually still starting its
// services.
func (h *health) check(id string, addrs []string) {
	for _, addr := range addrs {
		if h.isDown(addr) {
			continue
		}
		h.spawn(id, func(ctx context.Context) {
			if !h.accepts(ctx, addr) && ctx.Err() == nil {
				h.markDown(id, addr)
			}
		})
	}
}

// forget ends the checks and probes of sandbox id and drops the health of
// its addrs.
func (h *health) forget(id string, addrs []string) {
	h.mu.Lock()
	if s, ok := h.scopes[id]; ok {
		s.cancel()
		delete(h.scopes, id)
	}
	h.mu.Unlock()
	for _, addr := range addrs {
		h.down.Delete(addr)
	}
}

// spawn runs fn for sandbox id in a goroutine while the edge runs; false
// if it does not.
func (h *health) spawn(id string, fn func(context.Context)) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx == nil || h.ctx.Err() != nil {
		return false
	}
	s, ok := h.scopes[id]
	if !ok {
		s.ctx, s.cancel = context.WithCancel(h.ctx)
		h.scopes[id] = s
	}
	h.wg.Add(1)
	go func(wg *sync.WaitGroup) { defer wg.Done(); fn(s.ctx) }(h.wg)
	return true
}

func (h *health) probe(ctx context.Context, addr string, p *probe) {
	defer close(p.done)
	defer h.down.CompareAndDelete(addr, p)
	wait := h.probeMin
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.poke:
			if wait > h.probeMin {
				wait = h.probeMin
				t.Reset(wait)
			}
			continue
		case <-t.C:
		}
		if v, ok := h.down.Load(addr); !ok || v != p {
			return // forgotten: the sandbox stopped or its routes went away
		}
		if h.accepts(ctx, addr) || h.now().Sub(time.Unix(0, p.wanted.Load())) > h.probeIdle {
			return
		}
		wait = min(wait*2, h.probeMax)
		t.Reset(wait)
	}
}

func (h *health) accepts(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, h.probeTimeout)
	defer cancel()
	c, err := h.dial(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
