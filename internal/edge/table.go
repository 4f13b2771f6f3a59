package edge

import (
	"slices"
	"sync"

	"atelier/internal/store"
)

// table is the in-memory routing table the Caddy modules read on every
// request. Every change is a few map operations under one lock, whatever the
// number of routes: nothing is ever reloaded into Caddy.
type table struct {
	mu        sync.RWMutex
	hosts     map[string]*tableRoute
	sandboxes map[string]*tableSandbox
}

type tableRoute struct {
	route store.Route
	sb    *tableSandbox
}

// tableSandbox is what the edge knows of a sandbox: where its guest is and
// whether it is up. Routes of a sandbox that is not up answer 503.
type tableSandbox struct {
	ip    string
	up    bool
	hosts map[string]struct{}
}

// target is the answer of a lookup, copied out so no lock is held while
// the request is served.
type target struct {
	sandboxID string
	kind      string
	ip        string
	port      int
	public    bool
	up        bool
}

func newTable() *table {
	return &table{hosts: map[string]*tableRoute{}, sandboxes: map[string]*tableSandbox{}}
}

func (t *table) lookup(host string) (target, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.hosts[host]
	if !ok {
		return target{}, false
	}
	return target{sandboxID: r.route.SandboxID, kind: r.route.Kind, ip: r.sb.ip, port: r.route.Port, public: r.route.Public, up: r.sb.up && r.sb.ip != ""}, true
}

// devSibling reports whether host is a dev host of sandbox id.
func (t *table) devSibling(id, host string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.hosts[host]
	return ok && r.route.SandboxID == id && r.route.Kind == "dev"
}

func (t *table) has(host string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.hosts[host]
	return ok
}

// sandboxLocked returns the entry of id, creating it; t.mu must be held.
func (t *table) sandboxLocked(id string) *tableSandbox {
	sb, ok := t.sandboxes[id]
	if !ok {
		sb = &tableSandbox{hosts: map[string]struct{}{}}
		t.sandboxes[id] = sb
	}
	return sb
}

// setSandbox records where a sandbox's guest is and whether it is up.
func (t *table) setSandbox(id, ip string, up bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sb := t.sandboxLocked(id)
	if ip != "" {
		sb.ip = ip
	}
	sb.up = up
}

// replace swaps the routes of sandboxID matched by drop for routes.
func (t *table) replace(sandboxID string, drop func(store.Route) bool, routes []store.Route) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sb := t.sandboxLocked(sandboxID)
	for h := range sb.hosts {
		if r := t.hosts[h]; r != nil && drop(r.route) {
			delete(t.hosts, h)
			delete(sb.hosts, h)
		}
	}
	for _, r := range routes {
		t.putLocked(sb, r)
	}
}

func (t *table) putLocked(sb *tableSandbox, r store.Route) {
	if old := t.hosts[r.Host]; old != nil && old.sb != sb {
		delete(old.sb.hosts, r.Host)
	}
	t.hosts[r.Host] = &tableRoute{route: r, sb: sb}
	sb.hosts[r.Host] = struct{}{}
}

// removeSandbox forgets a sandbox and all its routes.
func (t *table) removeSandbox(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sb, ok := t.sandboxes[id]
	if !ok {
		return
	}
	for h := range sb.hosts {
		delete(t.hosts, h)
	}
	delete(t.sandboxes, id)
}

// sandboxOf reports which sandbox a host belongs to.
func (t *table) sandboxOf(host string) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	r, ok := t.hosts[host]
	if !ok {
		return "", false
	}
	return r.route.SandboxID, true
}

// len is the number of routes (for tests and benchmarks).
func (t *table) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.hosts)
}

// ports returns the guest address of a sandbox and the ports its routes
// lead to, each once.
func (t *table) ports(id string) (ip string, ports []int) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	sb, ok := t.sandboxes[id]
	if !ok {
		return "", nil
	}
	for h := range sb.hosts {
		if r := t.hosts[h]; r != nil && !slices.Contains(ports, r.route.Port) {
			ports = append(ports, r.route.Port)
		}
	}
	return sb.ip, ports
}

// isUp reports whether a sandbox's guest is up.
func (t *table) isUp(id string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	sb, ok := t.sandboxes[id]
	return ok && sb.up && sb.ip != ""
}

// portHolder returns another sandbox with a dev route to port: in mock mode
// every sandbox's guest is this machine, so two of them on one port would
// reach the same process.
func (t *table) portHolder(port int, except string) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, r := range t.hosts {
		if r.route.Kind == store.RouteDev && r.route.Port == port && r.route.SandboxID != except {
			return r.route.SandboxID, true
		}
	}
	return "", false
}
