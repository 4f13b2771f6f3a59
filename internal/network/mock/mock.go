// Package mock is the mock-mode network: per-sandbox links live in memory
// and nothing on the host changes.
package mock

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"atelier/internal/ids"
	"atelier/internal/store"
)

// Operation names for FailNext.
const (
	OpAttach = "attach"
	OpDetach = "detach"
)

// Link is one attached sandbox link.
type Link struct {
	Name string
	IP   string
	MAC  string
}

// Network is an in-memory sandbox.Network, safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	links map[string]Link
	fail  map[string]error
}

// New returns a network with no links.
func New() *Network {
	return &Network{links: map[string]Link{}, fail: map[string]error{}}
}

// LinkName is the seed's TAP name: "tap-" and the first 8 characters of the id.
func LinkName(id string) string {
	if len(id) > 8 {
		id = id[:8]
	}
	return "tap-" + id
}

// FailNext makes the next call of op return err.
func (n *Network) FailNext(op string, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail[op] = err
}

func (n *Network) takeFailure(op string) error {
	if err, ok := n.fail[op]; ok {
		delete(n.fail, op)
		return err
	}
	return nil
}

// Attach records the sandbox's link, replacing a previous one.
func (n *Network) Attach(ctx context.Context, id string, lease store.Lease) (string, error) {
	if !ids.ValidSandboxID(id) {
		return "", fmt.Errorf("attach: invalid sandbox id %q", id)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("attach %s: %w", id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.takeFailure(OpAttach); err != nil {
		return "", fmt.Errorf("attach %s: %w", id, err)
	}
	l := Link{Name: LinkName(id), IP: lease.IP, MAC: lease.MAC}
	n.links[id] = l
	return l.Name, nil
}

// Detach forgets the link; an absent link is already gone.
func (n *Network) Detach(ctx context.Context, id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.takeFailure(OpDetach); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	delete(n.links, id)
	return nil
}

// Links returns the attached links by sandbox id.
func (n *Network) Links() map[string]Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]Link, len(n.links))
	for id, l := range n.links {
		out[id] = l
	}
	return out
}

// LinkIDs lists the sandbox ids with a link, sorted.
func (n *Network) LinkIDs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.links))
	for id := range n.links {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}
