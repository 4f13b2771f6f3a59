package guest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"atelier/internal/agent"
)

// pipeGrace bounds how long output pipes are drained after the command's
// leader exited while a background grandchild still holds them open.
const pipeGrace = 500 * time.Millisecond

// execLimits validates the bounded numbers of an exec request.
func execLimits(req *agent.ExecRequest, stream bool) (time.Duration, int64, error) {
	timeout := agent.DefaultExecTimeout
	switch {
	case req.TimeoutMs < 0:
		return 0, 0, errBadField("timeoutMs", "must not be negative")
	case req.TimeoutMs > agent.MaxExecTimeout.Milliseconds():
		return 0, 0, errBadField("timeoutMs", "must be at most %d", agent.MaxExecTimeout.Milliseconds())
	case req.TimeoutMs > 0:
		timeout = time.Duration(req.TimeoutMs) * time.Millisecond
	}
	maxOut := int64(agent.DefaultMaxOutput)
	switch {
	case req.MaxOutputBytes < 0:
		return 0, 0, errBadField("maxOutputBytes", "must not be negative")
	case req.MaxOutputBytes > agent.MaxOutput:
		return 0, 0, errBadField("maxOutputBytes", "must be at most %d", agent.MaxOutput)
	case req.MaxOutputBytes > 0:
		maxOut = req.MaxOutputBytes
	}
	if req.Encoding != "" && req.Encoding != agent.EncodingBase64 && req.Encoding != agent.EncodingUTF8 {
		return 0, 0, errBadField("encoding", "must be \"\", \"utf8\" or \"base64\"")
	}
	if req.StdinStream && !stream {
		return 0, 0, errBadField("stdinStream", "only valid on /exec/stream")
	}
	if req.StdinStream && req.Stdin != "" {
		return 0, 0, errBadField("stdin", "cannot be combined with stdinStream")
	}
	return timeout, maxOut, nil
}

func (s *Server) acquireExec(ctx context.Context) (func(), error) {
	select {
	case s.execSem <- struct{}{}:
		return func() { <-s.execSem }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for an exec slot: %w", ctx.Err())
	}
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) error {
	var req agent.ExecRequest
	if err := decode(w, r, &req, s.opts.MaxFileBytes+maxJSONBody, false); err != nil {
		return err
	}
	timeout, maxOut, err := execLimits(&req, false)
	if err != nil {
		return err
	}
	p, err := s.prepare(commandSpec{argv: req.Argv, shell: req.Shell, login: req.Login, env: req.Env, cwd: req.Cwd, user: req.User})
	if err != nil {
		return err
	}
	release, err := s.acquireExec(r.Context())
	if err != nil {
		return err
	}
	defer release()
	res, err := s.runExec(r.Context(), p, req.Stdin, timeout, maxOut)
	if err != nil {
		return err
	}
	if req.Encoding == agent.EncodingBase64 {
		res.Encoding = agent.EncodingBase64
		res.Stdout = base64.StdEncoding.EncodeToString([]byte(res.Stdout))
		res.Stderr = base64.StdEncoding.EncodeToString([]byte(res.Stderr))
	}
	return writeJSON(w, http.StatusOK, res)
}

// capBuffer keeps the first max bytes and counts (then drops) the rest,
// so a chatty command still runs to its own exit code.
type capBuffer struct {
	buf       []byte
	max       int64
	truncated bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	room := c.max - int64(len(c.buf))
	if room <= 0 {
		if len(p) > 0 {
			c.truncated = true
		}
		return len(p), nil
	}
	if int64(len(p)) > room {
		c.buf = append(c.buf, p[:room]...)
		c.truncated = true
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// runExec runs a prepared command to completion. The context covers the
// client: when the request goes away, or the timeout fires, the whole
// process group is killed.
func (s *Server) runExec(parent context.Context, p *prepared, stdin string, timeout time.Duration, maxOut int64) (*agent.ExecResult, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	cmd := p.command()
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	stdout := &capBuffer{max: maxOut}
	stderr := &capBuffer{max: maxOut}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = pipeGrace
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, startError(err)
	}
	pgid := cmd.Process.Pid
	s.trackExec(pgid, true)
	defer s.trackExec(pgid, false)
	stop := context.AfterFunc(ctx, func() { killGroup(pgid) })
	waitErr := cmd.Wait()
	// Only a kill that actually happened makes this a timeout; a command
	// that finished a hair before the deadline keeps its own result.
	killed := !stop()
	if waitErr != nil && cmd.ProcessState == nil {
		return nil, fmt.Errorf("wait for command: %w", waitErr)
	}
	code, sig := exitInfo(cmd.ProcessState)
	return &agent.ExecResult{
		ExitCode:   code,
		Signal:     sig,
		Stdout:     string(stdout.buf),
		Stderr:     string(stderr.buf),
		Truncated:  stdout.truncated || stderr.truncated,
		TimedOut:   killed && errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil,
		DurationMs: float64(time.Since(start).Microseconds()) / 1000,
	}, nil
}

// startError classifies a failed start: the request's fault (missing or
// non-executable program, bad directory) is a 400, the rest a 500.
func startError(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) ||
		errors.Is(err, syscall.ENOEXEC) || errors.Is(err, exec.ErrNotFound) {
		return &apiError{status: http.StatusBadRequest, code: agent.CodeStartFailed, field: "argv", detail: "argv: start command: " + err.Error()}
	}
	return &apiError{status: http.StatusInternalServerError, code: agent.CodeStartFailed, detail: "start command: " + err.Error()}
}

// wsOutput sends one tagged binary frame per write.
type wsOutput struct {
	ctx  context.Context
	conn *websocket.Conn
	tag  byte
}

func (o *wsOutput) Write(p []byte) (int, error) {
	frame := make([]byte, 1+len(p))
	frame[0] = o.tag
	copy(frame[1:], p)
	if err := o.conn.Write(o.ctx, websocket.MessageBinary, frame); err != nil {
		return 0, err
	}
	return len(p), nil
}

func acceptWS(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		// Accept has already answered the request.
		return nil, nil
	}
	conn.SetReadLimit(1 << 20)
	return conn, nil
}

func sendEvent(ctx context.Context, conn *websocket.Conn, ev agent.StreamEvent) error {
	b, _ := json.Marshal(ev)
	return conn.Write(ctx, websocket.MessageText, b)
}

// execStream is GET /exec/stream; see agent.StreamStdout for the framing.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request) error {
	conn, _ := acceptWS(w, r)
	if conn == nil {
		return nil
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	fail := func(err error) error {
		_, p := problemOf(err)
		_ = sendEvent(ctx, conn, agent.StreamEvent{Type: agent.StreamError, Code: p.Code, Detail: p.Detail})
		conn.Close(websocket.StatusNormalClosure, "")
		return nil
	}
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	typ, data, err := conn.Read(hctx)
	hcancel()
	if err != nil {
		return nil
	}
	var req agent.ExecRequest
	if typ != websocket.MessageText || json.Unmarshal(data, &req) != nil {
		return fail(errBadField("body", "first message must be the JSON exec request"))
	}
	timeout, _, err := execLimits(&req, true)
	if err != nil {
		return fail(err)
	}
	p, err := s.prepare(commandSpec{argv: req.Argv, shell: req.Shell, login: req.Login, env: req.Env, cwd: req.Cwd, user: req.User})
	if err != nil {
		return fail(err)
	}
	release, err := s.acquireExec(ctx)
	if err != nil {
		return nil
	}
	defer release()

	rctx, rcancel := context.WithTimeout(ctx, timeout)
	defer rcancel()
	cmd := p.command()
	var stdinW *os.File
	if req.StdinStream {
		pr, pw, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("stdin pipe: %w", err))
		}
		defer pr.Close()
		stdinW = pw
		cmd.Stdin = pr
	} else if req.Stdin != "" {
		cmd.Stdin = strings.NewReader(req.Stdin)
	}
	cmd.Stdout = &wsOutput{ctx: ctx, conn: conn, tag: agent.StreamStdout}
	cmd.Stderr = &wsOutput{ctx: ctx, conn: conn, tag: agent.StreamStderr}
	cmd.WaitDelay = pipeGrace
	start := time.Now()
	if err := cmd.Start(); err != nil {
		if stdinW != nil {
			stdinW.Close()
		}
		return fail(startError(err))
	}
	pgid := cmd.Process.Pid
	s.trackExec(pgid, true)
	defer s.trackExec(pgid, false)
	stop := context.AfterFunc(rctx, func() { killGroup(pgid) })

	// The reader owns stdin; it also notices the client leaving, which
	// cancels ctx and so kills the group.
	go func() {
		defer cancel()
		defer func() {
			if stdinW != nil {
				stdinW.Close()
			}
		}()
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if stdinW != nil {
					if _, err := stdinW.Write(data); err != nil {
						stdinW.Close()
						stdinW = nil
					}
				}
				continue
			}
			var m agent.StreamControl
			if json.Unmarshal(data, &m) != nil {
				continue
			}
			switch m.Type {
			case agent.StreamCloseStdin:
				if stdinW != nil {
					stdinW.Close()
					stdinW = nil
				}
			case agent.StreamKill:
				if sig, err := parseSignal(m.Signal); err == nil {
					_ = signalGroup(pgid, sig)
				}
			}
		}
	}()

	waitErr := cmd.Wait()
	killed := !stop()
	if waitErr != nil && cmd.ProcessState == nil {
		return fail(fmt.Errorf("wait for command: %w", waitErr))
	}
	code, sig := exitInfo(cmd.ProcessState)
	_ = sendEvent(ctx, conn, agent.StreamEvent{
		Type:       agent.StreamExit,
		ExitCode:   code,
		Signal:     sig,
		TimedOut:   killed && errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil,
		DurationMs: float64(time.Since(start).Microseconds()) / 1000,
	})
	conn.Close(websocket.StatusNormalClosure, "")
	return nil
}
