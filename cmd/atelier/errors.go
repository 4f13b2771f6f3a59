package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"atelier/internal/client"
	"atelier/internal/config"
)

// exitError ends the CLI with a status and no message of its own: the exit
// status of a command run in a sandbox, passed through.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// report prints err the way the CLI prints every error, one line naming
// what to fix, and returns the exit status: 1, or the status a sandbox
// command exited with.
func report(w io.Writer, err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ve *config.ValidationError
	if errors.As(err, &ve) {
		fmt.Fprintln(w, "atelier: invalid configuration:")
		fmt.Fprintln(w, ve.Error())
		return 1
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		// One line for each problem, the first one prefixed.
		msg = strings.TrimRight(msg, "\n")
	}
	fmt.Fprintln(w, "atelier: "+msg)
	return 1
}

// flagError rewrites an API refusal naming a body field into one naming
// the command's flag for it (memoryMb → --memory), so a CLI user reads the
// flag they typed.
func flagError(err error, flags map[string]string) error {
	var e *client.Error
	if !errors.As(err, &e) {
		return err
	}
	for i := range e.Errors {
		fe := e.Errors[i]
		flag, ok := flags[strings.TrimPrefix(fe.Location, "body.")]
		if !ok {
			continue
		}
		if fe.Value != nil && fmt.Sprint(fe.Value) != "" {
			return fmt.Errorf("%s %v: %s", flag, fe.Value, fe.Message)
		}
		return fmt.Errorf("%s: %s", flag, fe.Message)
	}
	return err
}
