package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Container statuses as runc reports them ("paused" is runc's own).
const (
	statusCreating = "creating"
	statusCreated  = "created"
	statusRunning  = "running"
	statusPaused   = "paused"
	statusStopped  = "stopped"
)

// errNoContainer: runc knows no container of that name.
var errNoContainer = errors.New("no such container")

// runcState is the part of `runc state` the driver reads.
type runcState struct {
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Annotations map[string]string `json:"annotations"`
}

// live reports a container whose processes may still run.
func (s runcState) live() bool {
	switch s.Status {
	case statusCreating, statusCreated, statusRunning, statusPaused:
		return true
	}
	return false
}

// runcCommand builds `runc --root <StateDir> args...`.
func (d *Driver) runcCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.runc, append([]string{"--root", d.opts.StateDir}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// runcOutput runs a runc command that exits on its own and returns its
// standard output; a failure carries runc's message.
func (d *Driver) runcOutput(ctx context.Context, args ...string) ([]byte, error) {
	cmd := d.runcCommand(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := runcMessage(stderr.Bytes())
		if strings.Contains(msg, "does not exist") {
			return nil, fmt.Errorf("runc %s: %w", args[0], errNoContainer)
		}
		return nil, fmt.Errorf("runc %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}

// runcMessage extracts the messages from runc's stderr: plain text, logrus
// text lines (time=... level=error msg="...") or JSON lines.
func runcMessage(b []byte) string {
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var l struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg != "" {
			line = l.Msg
		} else if _, rest, ok := strings.Cut(line, ` msg="`); ok {
			if m, err := strconv.QuotedPrefix(`"` + rest); err == nil {
				line, _ = strconv.Unquote(m)
			}
		}
		msgs = append(msgs, line)
	}
	s := strings.Join(msgs, "; ")
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

func containerName(id string) string { return namePrefix + id }

// state returns the container's runc state, or errNoContainer. The state
// directory is checked first: most calls ask about absent containers
// (teardown retries, reconciler sweeps) and need no exec for that.
func (d *Driver) state(ctx context.Context, id string) (runcState, error) {
	name := containerName(id)
	if _, err := os.Stat(filepath.Join(d.opts.StateDir, name, "state.json")); errors.Is(err, os.ErrNotExist) {
		return runcState{}, errNoContainer
	}
	out, err := d.runcOutput(ctx, "state", name)
	if err != nil {
		return runcState{}, err
	}
	var st runcState
	if err := json.Unmarshal(out, &st); err != nil {
		return runcState{}, fmt.Errorf("parse runc state: %w", err)
	}
	return st, nil
}

// list returns the states of every container under the driver's runc root.
func (d *Driver) list(ctx context.Context) ([]runcState, error) {
	if _, err := os.Stat(d.opts.StateDir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	out, err := d.runcOutput(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var sts []runcState
	// An empty root prints "null".
	if err := json.Unmarshal(out, &sts); err != nil {
		return nil, fmt.Errorf("parse runc list: %w", err)
	}
	return sts, nil
}
