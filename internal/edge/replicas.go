package edge

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"atelier/internal/store"
)

// Several managers may share one store (replicas on Postgres). Each runs an
// edge with its own in-memory table, and any of them may receive a request
// for any sandbox's host. The store is the source of truth for routes and
// for where a guest is; the table of every replica follows it through
// Refresh, which the server calls for every sandbox event and every route
// change another replica announces (Options.Changed on that replica, the
// shared event stream between them).

// Refresh makes the table's entry of a sandbox what the store says now:
// its routes, its guest address and whether it is up. A sandbox that no
// longer exists loses its routes. Reading the current row (never the event
// that prompted the call) means a late or repeated call can only bring the
// table forward.
func (e *Edge) Refresh(ctx context.Context, id string) error {
	unlock, err := e.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("refresh routes of %s: %w", id, err)
	}
	defer unlock()
	sb, err := e.st.GetSandbox(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		e.health.forget(id, e.addrs(id))
		e.table.removeSandbox(id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("refresh routes of %s: %w", id, err)
	}
	routes, err := e.st.ListRoutes(ctx, id)
	if err != nil {
		return fmt.Errorf("refresh routes of %s: %w", id, err)
	}
	wasUp := e.table.isUp(id)
	oldIP, _ := e.table.ports(id)
	e.table.replace(id, func(store.Route) bool { return true }, routes)
	// A guest coming up has its address on the row only once running; a
	// lifecycle hook of this process knew it earlier and stays right.
	isUp := slices.Contains(up, sb.Status) && (sb.IP != "" || wasUp)
	e.table.setSandbox(id, sb.IP, isUp)
	switch {
	case isUp && (!wasUp || oldIP != sb.IP):
		// A guest that came up on another replica: what this edge knew of
		// its ports (nothing, or an earlier boot's) is stale.
		addrs := e.addrs(id)
		e.health.forget(id, addrs)
		e.health.check(id, addrs)
	case !isUp && wasUp:
		e.health.forget(id, e.addrs(id))
	}
	return nil
}

// changed tells the other replicas that a sandbox's routes changed here.
func (e *Edge) changed(ctx context.Context, id string) {
	if e.onChange != nil {
		e.onChange(context.WithoutCancel(ctx), id)
	}
}
