// Package mock is the mock-mode runtime: it tracks instances in memory and
// touches nothing on the host. Tests inject failures and pauses to prove
// that the lifecycle undoes what it started.
package mock

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

// Operation names for FailNext and BlockNext.
const (
	OpBoot    = "boot"
	OpStop    = "stop"
	OpDestroy = "destroy"
	OpAlive   = "alive"
	OpGrow    = "grow"
)

// Runtime is an in-memory sandbox.Runtime, safe for concurrent use.
type Runtime struct {
	mu        sync.Mutex
	instances map[string]sandbox.Instance
	fail      map[string]error
	block     map[string]*blocker
	grown     map[string]int
}

type blocker struct {
	entered chan struct{}
	release chan struct{}
}

var (
	_ sandbox.Runtime    = (*Runtime)(nil)
	_ sandbox.DiskGrower = (*Runtime)(nil)
)

// New returns an empty runtime.
func New() *Runtime {
	return &Runtime{instances: map[string]sandbox.Instance{}, fail: map[string]error{}, block: map[string]*blocker{}}
}

// FailNext makes the next call of op return err.
func (r *Runtime) FailNext(op string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail[op] = err
}

// BlockNext makes the next call of op wait until release is called or its
// context is done (it then returns the context's error, acting on nothing).
// entered is closed when that call starts waiting.
func (r *Runtime) BlockNext(op string) (entered <-chan struct{}, release func()) {
	b := &blocker{entered: make(chan struct{}), release: make(chan struct{})}
	r.mu.Lock()
	r.block[op] = b
	r.mu.Unlock()
	var once sync.Once
	return b.entered, func() { once.Do(func() { close(b.release) }) }
}

// enter applies an injected pause, then an injected failure.
func (r *Runtime) enter(ctx context.Context, op string) error {
	r.mu.Lock()
	b := r.block[op]
	delete(r.block, op)
	r.mu.Unlock()
	if b != nil {
		close(b.entered)
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err, ok := r.fail[op]; ok {
		delete(r.fail, op)
		return err
	}
	return nil
}

// Boot records a running instance.
func (r *Runtime) Boot(ctx context.Context, inst sandbox.Instance) error {
	if !ids.ValidSandboxID(inst.ID) {
		return fmt.Errorf("boot: invalid sandbox id %q", inst.ID)
	}
	if err := r.enter(ctx, OpBoot); err != nil {
		return fmt.Errorf("boot %s: %w", inst.ID, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.instances[inst.ID]; ok {
		return fmt.Errorf("boot %s: already running", inst.ID)
	}
	inst.DNS = append([]string(nil), inst.DNS...)
	r.instances[inst.ID] = inst
	return nil
}

// Stop forgets the instance; an unknown one is already stopped.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if err := r.enter(ctx, OpStop); err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.instances, id)
	return nil
}

// Destroy forgets the instance; an unknown one is already gone.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if err := r.enter(ctx, OpDestroy); err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.instances, id)
	return nil
}

// GrowDisk counts a grow of a running instance's filesystem; an instance
// that is not running is an error, as for a real runtime.
func (r *Runtime) GrowDisk(ctx context.Context, id string) error {
	if err := r.enter(ctx, OpGrow); err != nil {
		return fmt.Errorf("grow disk of %s: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.instances[id]; !ok {
		return fmt.Errorf("grow disk of %s: not running", id)
	}
	if r.grown == nil {
		r.grown = map[string]int{}
	}
	r.grown[id]++
	return nil
}

// Grown is how many times the instance's filesystem was grown.
func (r *Runtime) Grown(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.grown[id]
}

// Alive reports whether the instance is running.
func (r *Runtime) Alive(ctx context.Context, id string) (bool, error) {
	if err := r.enter(ctx, OpAlive); err != nil {
		return false, fmt.Errorf("alive %s: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.instances[id]
	return ok, nil
}

// Instances lists the running instances' ids, sorted.
func (r *Runtime) Instances() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.instances))
	for id := range r.instances {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Instance returns what a running instance was booted with.
func (r *Runtime) Instance(id string) (sandbox.Instance, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst, ok := r.instances[id]
	return inst, ok
}
