// Package script is the fake command runner of the storage tests: it
// expects an exact sequence of argv and answers each with a scripted reply,
// so a test asserts every command a driver runs, in order.
package script

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"atelier/internal/storage"
)

// Step is one expected command and its reply.
type Step struct {
	Argv []string
	Out  string
	Err  error
	// Do is the command's side effect, e.g. a device node appearing.
	Do func()
}

// Cmd expects argv and succeeds with no output.
func Cmd(argv ...string) Step { return Step{Argv: argv} }

// Returns sets the command's stdout.
func (s Step) Returns(out string) Step { s.Out = out; return s }

// Fails makes the command fail with exit status 5 and stderr, as
// storage.Exec reports it.
func (s Step) Fails(stderr string) Step { return s.Exits(5, stderr) }

// Exits makes the command fail with the exit status and stderr.
func (s Step) Exits(code int, stderr string) Step {
	s.Err = &storage.ExecError{Argv: s.Argv, Code: code, Stderr: stderr, Err: fmt.Errorf("exit status %d", code)}
	return s
}

// Runner replays steps; any other command fails the test.
type Runner struct {
	t     testing.TB
	mu    sync.Mutex
	steps []Step
	next  int
}

// New returns a runner expecting steps, and checks at cleanup that every
// step ran.
func New(t testing.TB, steps ...Step) *Runner {
	r := &Runner{t: t, steps: steps}
	t.Cleanup(r.check)
	return r
}

func (r *Runner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	argv := append([]string{name}, args...)
	if r.next >= len(r.steps) {
		r.t.Errorf("unexpected command %q", argv)
		return nil, errors.New("unexpected command")
	}
	st := r.steps[r.next]
	r.next++
	if !slices.Equal(argv, st.Argv) {
		r.t.Errorf("command %d = %q\n                want %q", r.next, argv, st.Argv)
	}
	if st.Do != nil {
		st.Do()
	}
	return []byte(st.Out), st.Err
}

func (r *Runner) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next != len(r.steps) {
		r.t.Errorf("ran %d of %d commands; first missing: %q", r.next, len(r.steps), r.steps[r.next].Argv)
	}
}
