// Package hostcmd runs host commands for the operations CLI (init, update,
// uninstall, manager): argv only, never a shell string, with the command's
// output streamed to the caller so that a long step (a package install, a
// kernel build) shows its progress. hostcmdtest is its scripted stand-in:
// tests assert every command, in order, as exact argv.
package hostcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// Runner runs argv[0] with argv[1:], writing its stdout and stderr to out
// (nil: discarded). A command that ran and failed is an *ExitError.
type Runner interface {
	Run(ctx context.Context, out io.Writer, argv ...string) error
}

// ExitError is a command that failed.
type ExitError struct {
	Argv []string
	// Code is the exit status, -1 when the command did not run to an exit.
	Code int
	// Tail is the end of what the command printed, for the message.
	Tail string
	Err  error
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	if t := strings.TrimSpace(e.Tail); t != "" {
		msg += ": " + t
	}
	return msg
}

func (e *ExitError) Unwrap() error { return e.Err }

// Code returns the exit status of a failed command, 0 for nil and -1 for
// an error that is not an *ExitError.
func Code(err error) int {
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// Exec runs commands on this host. Env is added to the process's own
// environment (DEBIAN_FRONTEND=noninteractive, say).
type Exec struct {
	Env []string
	// Stdin is given to the command (nil: none).
	Stdin io.Reader
}

const tailMax = 2048

// Run executes argv. Its output goes to out and the last 2 KiB of it are
// kept for the error message.
func (x Exec) Run(ctx context.Context, out io.Writer, argv ...string) error {
	if len(argv) == 0 {
		return errors.New("run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), x.Env...)
	cmd.Stdin = x.Stdin
	tail := &tailBuffer{max: tailMax}
	w := io.Writer(tail)
	if out != nil {
		w = io.MultiWriter(out, tail)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return &ExitError{Argv: argv, Code: code, Tail: tail.String(), Err: err}
	}
	return nil
}

// Output runs argv and returns what it printed (stdout and stderr).
func Output(ctx context.Context, r Runner, argv ...string) (string, error) {
	var b bytes.Buffer
	err := r.Run(ctx, &b, argv...)
	return b.String(), err
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
