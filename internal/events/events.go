// Package events is the manager's event bus: every sandbox state change is
// persisted in the store (so SSE clients can resume with Last-Event-ID) and
// then fanned out to in-process subscribers.
//
// An SSE handler must not lose or repeat events between its replay and the
// live stream. The pattern:
//
//	live, cancel := bus.Subscribe() // 1. subscribe first
//	defer cancel()
//	past, gap, err := bus.Replay(ctx, lastEventID, limit) // 2. then replay
//	// gap: lastEventID is older than the retained history; tell the client to resync.
//	last := lastEventID
//	for _, ev := range past { send(ev); last = ev.ID }
//	for ev := range live { // 3. skip what the replay already sent
//		if ev.ID <= last { continue }
//		send(ev); last = ev.ID
//	}
//
// It works because Publish persists an event before fanning it out: an event
// fanned out before Subscribe returned is already in the store when Replay
// reads it, and one fanned out later reaches the channel. Publishers are
// serialized, so live events arrive in increasing id order. If Replay returns
// limit events, page with Replay(ctx, last, limit) until fewer come back.
//
// With a shared store (Postgres, several manager replicas) the bus tails
// the event table instead: Publish only persists, and Run fans out every
// event of the table, whichever replica wrote it, in id order (the store
// commits event ids in order). Subscribers and the pattern above are
// unchanged. A commit wakes every replica's tail through Postgres
// LISTEN/NOTIFY (this one's also directly from Publish); the tail polls
// every TailEvery as well, in case notifications are lost.
//
// A subscriber that does not keep up is dropped: its channel is closed, and
// the client resumes from its last id. One slow SSE client never stalls the
// lifecycle that publishes.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"atelier/internal/store"
)

// Event types.
const (
	SandboxCreated = "sandbox.created"
	SandboxUpdated = "sandbox.updated"
	SandboxDeleted = "sandbox.deleted"
	// SystemReconciled carries what a reconciler pass fixed (sandbox.Report);
	// the API streams system.* events to admins only.
	SystemReconciled = "system.reconciled"
	// SystemRoutes says a sandbox's edge routes changed on one manager
	// replica (data: the sandbox id), so the others' edges re-read them.
	// Published on a shared store only; admins only, as every system.*.
	SystemRoutes = "system.routes"
)

const (
	// Keep is how many events the store retains for replay.
	Keep = 10000
	// TrimEvery is how often Run trims the event table.
	TrimEvery = time.Minute
	// SubscriberBuffer is how many undelivered events a subscriber may hold
	// before it is dropped.
	SubscriberBuffer = 256
	// DefaultReplayLimit applies when Replay is asked for limit <= 0.
	DefaultReplayLimit = 1000
	// TailEvery is how often a tailing bus reads the table for events
	// other replicas wrote when no notification woke it (LISTEN/NOTIFY
	// wakes it at once; this bounds the delay while that is down).
	TailEvery = time.Second
)

// Bus persists and fans out events.
type Bus struct {
	st  *store.Store
	log *slog.Logger

	// pub serializes persist+fan-out so subscribers see ids in increasing
	// order; subscribers never wait on it.
	pub sync.Mutex

	mu   sync.Mutex
	subs map[*subscriber]struct{}

	buf   int
	keep  int
	every time.Duration

	// tail: fan out from the table (shared store), see the package doc.
	tail      bool
	tailEvery time.Duration
	kick      chan struct{}
	tailFrom  int64
	leader    func() bool
}

type subscriber struct {
	ch chan store.Event
}

// New returns a bus persisting into st.
func New(st *store.Store, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.Default()
	}
	b := &Bus{
		st:    st,
		log:   log,
		subs:  map[*subscriber]struct{}{},
		buf:   SubscriberBuffer,
		keep:  Keep,
		every: TrimEvery,

		tail:      st.Backend() == "postgres",
		tailEvery: TailEvery,
		kick:      make(chan struct{}, 1),
	}
	if b.tail {
		// Read now, before anyone can Subscribe: every event committed
		// after a Subscribe then has a larger id and is fanned out. Read
		// when Run starts, an event published in between would be in no
		// subscriber's replay and never live.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		last, err := st.LatestEventID(ctx)
		if err != nil {
			// From 0 the tail fans out the retained history once; SSE
			// clients skip ids they replayed, and nothing is missed.
			log.Warn("tail events: read the latest id; starting from the oldest", "err", err)
		}
		b.tailFrom = last
	}
	return b
}

// SetLeader makes Run trim the table only while leader() is true: with
// several managers on one store, one trims. Call before Run.
func (b *Bus) SetLeader(leader func() bool) { b.leader = leader }

// Publish persists an event, then hands it to every subscriber without
// blocking. data is encoded as JSON.
func (b *Bus) Publish(ctx context.Context, typ, sandboxID string, data any) (store.Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return store.Event{}, fmt.Errorf("encode %s event: %w", typ, err)
	}
	b.pub.Lock()
	defer b.pub.Unlock()
	ev, err := b.st.AppendEvent(ctx, store.Event{Type: typ, SandboxID: sandboxID, Data: raw})
	if err != nil {
		return store.Event{}, fmt.Errorf("persist %s event: %w", typ, err)
	}
	if b.tail {
		b.wake()
		return ev, nil
	}
	b.fanOut(ev)
	return ev, nil
}

// wake makes the tail read the table now.
func (b *Bus) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Bus) fanOut(ev store.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.ch <- ev:
		default:
			delete(b.subs, s)
			close(s.ch)
			b.log.Warn("event subscriber dropped: buffer full", "event_id", ev.ID, "buffer", cap(s.ch))
		}
	}
}

// Subscribe returns a channel of live events and a cancel func (idempotent)
// that unsubscribes and closes the channel. The channel is also closed when
// the subscriber falls behind by more than SubscriberBuffer events.
func (b *Bus) Subscribe() (<-chan store.Event, func()) {
	s := &subscriber{ch: make(chan store.Event, b.buf)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s.ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[s]; ok {
			delete(b.subs, s)
			close(s.ch)
		}
	}
}

// Subscribers reports how many subscribers are attached.
func (b *Bus) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Replay returns up to limit retained events with id > afterID, oldest first.
// gap is true when events after afterID have been trimmed away, so the client
// cannot catch up by replay and must refetch its state. afterID 0 means "from
// the oldest retained event" and never reports a gap.
func (b *Bus) Replay(ctx context.Context, afterID int64, limit int) ([]store.Event, bool, error) {
	if limit <= 0 {
		limit = DefaultReplayLimit
	}
	evs, err := b.st.EventsSince(ctx, afterID, limit)
	if err != nil {
		return nil, false, fmt.Errorf("replay events after %d: %w", afterID, err)
	}
	if afterID <= 0 {
		return evs, false, nil
	}
	// Read the oldest id after the events: a trim in between reports a gap
	// (a needless resync at worst), never hides one.
	oldest, err := b.st.OldestEventID(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("replay events: oldest id: %w", err)
	}
	// Ids are contiguous, so afterID+1 is the next event the client needs;
	// an empty table with a position means the history is gone.
	gap := oldest == 0 || afterID+1 < oldest
	return evs, gap, nil
}

// Trim keeps the newest Keep events.
func (b *Bus) Trim(ctx context.Context) error {
	if err := b.st.TrimEvents(ctx, b.keep); err != nil {
		return fmt.Errorf("trim events: %w", err)
	}
	return nil
}

// Run trims the event table at start and every TrimEvery until ctx is done
// (only while leading, see SetLeader) and, on a shared store, tails it.
func (b *Bus) Run(ctx context.Context) {
	if b.tail {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); b.runTail(ctx) }()
	}
	t := time.NewTicker(b.every)
	defer t.Stop()
	for {
		if b.leader == nil || b.leader() {
			if err := b.Trim(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("trim events", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runTail fans out every event committed after New. Earlier ones are
// history, which subscribers get from Replay.
func (b *Bus) runTail(ctx context.Context) {
	last := b.tailFrom
	// Other replicas' events wake the tail through LISTEN/NOTIFY; the
	// ticker is the fallback while that connection is down.
	listening := make(chan struct{})
	defer func() { <-listening }()
	go func() {
		defer close(listening)
		for ctx.Err() == nil {
			err := b.st.ListenEvents(ctx, b.wake)
			if err != nil && ctx.Err() == nil {
				b.log.Warn("tail events: notifications lost; polling every "+b.tailEvery.String()+" until reconnected", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	t := time.NewTicker(b.tailEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.kick:
		}
		for {
			evs, err := b.st.EventsSince(ctx, last, DefaultReplayLimit)
			if err != nil {
				if ctx.Err() == nil {
					b.log.Warn("tail events", "after_id", last, "err", err)
				}
				break
			}
			for _, ev := range evs {
				b.fanOut(ev)
				last = ev.ID
			}
			if len(evs) < DefaultReplayLimit {
				break
			}
		}
	}
}
