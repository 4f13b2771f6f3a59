package sandbox

import (
	"context"
	"sync"
	"time"
)

// op is an in-flight create job or start, cancellable by Destroy.
type op struct {
	id       string
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	enqueued time.Time
	// locked: the op holds the sandbox lock for its whole run (a start);
	// a create job holds none.
	locked bool
	// prov says how a create job provisions its workspace (provision.go).
	prov ProvisionMode
	// name is the journal's op: OpCreate when empty, OpPoolFill, OpClaim.
	name string
}

// queue is the spawn queue: a FIFO that never blocks the pusher. Its length
// is bounded by server.maxSandboxes because every queued job is a creating
// row that counts against the limit.
type queue struct {
	mu    sync.Mutex
	items []*op
	wake  chan struct{}
	depth func(int)
}

func newQueue(depth func(int)) *queue {
	return &queue{wake: make(chan struct{}, 1), depth: depth}
}

func (q *queue) push(j *op) {
	q.mu.Lock()
	q.items = append(q.items, j)
	q.depth(len(q.items))
	q.mu.Unlock()
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop waits for a job; false once ctx is done, even with jobs left (they stay
// creating for the next start-up to settle).
func (q *queue) pop(ctx context.Context) (*op, bool) {
	for {
		if ctx.Err() != nil {
			return nil, false
		}
		q.mu.Lock()
		if len(q.items) > 0 {
			j := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			more := len(q.items) > 0
			q.depth(len(q.items))
			q.mu.Unlock()
			if more {
				// One wake-up may stand for several pushes: pass it on so
				// idle workers pick up the rest.
				q.signal()
			}
			return j, true
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, false
		case <-q.wake:
		}
	}
}

// remove takes a job out of the queue; false when a worker already has it.
func (q *queue) remove(j *op) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, it := range q.items {
		if it == j {
			q.items = append(q.items[:i], q.items[i+1:]...)
			q.depth(len(q.items))
			return true
		}
	}
	return false
}
