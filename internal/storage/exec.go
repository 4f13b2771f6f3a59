package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Runner runs one host command as argv, never through a shell, and returns
// its stdout. A failure is an *ExecError carrying stderr.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecError is a command that failed; Stderr is what it said.
type ExecError struct {
	Argv []string
	// Code is the exit status, -1 when the command did not run to an exit.
	Code   int
	Stderr string
	Err    error
}

func (e *ExecError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		return fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Argv, " "), e.Err, msg)
}

func (e *ExecError) Unwrap() error { return e.Err }

// StderrContains reports whether err is an *ExecError whose stderr holds s.
func StderrContains(err error, s string) bool {
	var ee *ExecError
	return errors.As(err, &ee) && strings.Contains(ee.Stderr, s)
}

// Exec runs commands on the host.
type Exec struct{}

// Run executes name, which must be an absolute path so $PATH cannot pick
// the binary. The C locale keeps the messages drivers parse stable.
func (Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if !filepath.IsAbs(name) {
		return nil, &ExecError{Argv: argv, Code: -1, Err: errors.New("binary path must be absolute")}
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// LVM warns about every inherited descriptor; the warning is noise here.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return stdout.Bytes(), &ExecError{Argv: argv, Code: code, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}
