// Package hostcmdtest is the scripted hostcmd.Runner of the operations
// tests: it expects an exact sequence of argv and answers each with a
// scripted output, exit status and side effect, so a test asserts every
// command a step runs (package installs, systemctl, useradd) without
// running any of them.
package hostcmdtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"atelier/internal/hostcmd"
)

// Step is one expected command and its reply.
type Step struct {
	Argv []string
	Out  string
	Code int
	// Do is the command's side effect, e.g. a package's files appearing.
	Do func()
}

// Cmd expects argv and succeeds with no output.
func Cmd(argv ...string) Step { return Step{Argv: argv} }

// Returns sets what the command prints.
func (s Step) Returns(out string) Step { s.Out = out; return s }

// Exits makes the command fail with the exit status.
func (s Step) Exits(code int) Step { s.Code = code; return s }

// Then sets the command's side effect.
func (s Step) Then(f func()) Step { s.Do = f; return s }

// Runner replays steps; any other command fails the test.
type Runner struct {
	t     testing.TB
	mu    sync.Mutex
	steps []Step
	next  int
	// Log records every argv run, joined by spaces.
	Log []string
}

// New returns a runner expecting steps, and checks at cleanup that every
// step ran.
func New(t testing.TB, steps ...Step) *Runner {
	r := &Runner{t: t, steps: steps}
	t.Cleanup(r.check)
	return r
}

// Expect appends steps to the script.
func (r *Runner) Expect(steps ...Step) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps = append(r.steps, steps...)
}

func (r *Runner) Run(_ context.Context, out io.Writer, argv ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Log = append(r.Log, strings.Join(argv, " "))
	if r.next >= len(r.steps) {
		r.t.Errorf("unexpected command %q", argv)
		return errors.New("unexpected command")
	}
	st := r.steps[r.next]
	r.next++
	if !slices.Equal(argv, st.Argv) {
		r.t.Errorf("command %d = %q\n                want %q", r.next, argv, st.Argv)
	}
	if st.Do != nil {
		st.Do()
	}
	if out != nil && st.Out != "" {
		io.WriteString(out, st.Out)
	}
	if st.Code != 0 {
		return &hostcmd.ExitError{Argv: argv, Code: st.Code, Tail: st.Out, Err: fmt.Errorf("exit status %d", st.Code)}
	}
	return nil
}

func (r *Runner) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next != len(r.steps) {
		r.t.Errorf("ran %d of %d commands; first missing: %q", r.next, len(r.steps), r.steps[r.next].Argv)
	}
}
