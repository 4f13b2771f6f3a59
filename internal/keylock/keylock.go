// Package keylock serialises operations per key (a sandbox id), with
// context-aware waiting and no per-key leftovers once a key is unlocked.
package keylock

import (
	"context"
	"sync"
)

// Mutex holds one lock per key; the zero value is ready to use.
type Mutex struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	ch   chan struct{}
	refs int
}

// Lock waits for key's lock or ctx; it returns the function that unlocks.
func (k *Mutex) Lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*entry{}
	}
	e := k.m[key]
	if e == nil {
		e = &entry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
		return func() {
			<-e.ch
			k.release(key, e)
		}, nil
	case <-ctx.Done():
		k.release(key, e)
		return nil, ctx.Err()
	}
}

func (k *Mutex) release(key string, e *entry) {
	k.mu.Lock()
	e.refs--
	if e.refs == 0 {
		delete(k.m, key)
	}
	k.mu.Unlock()
}

// Len is the number of keys locked or waited for (for tests).
func (k *Mutex) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}
