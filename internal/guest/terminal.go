package guest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"

	"atelier/internal/agent"
)

// Terminal tuning.
const (
	viewerQueue     = 256 // chunks buffered per viewer before it is dropped
	maxViewers      = 16
	ptyReadSize     = 32 << 10
	terminalHUPWait = 2 * time.Second
	maxSweepEvery   = 30 * time.Second
	minSweepEvery   = 10 * time.Millisecond
)

// terminals is the registry of PTY sessions.
type terminals struct {
	s        *Server
	mu       sync.Mutex
	sessions map[string]*session
	stop     chan struct{}
	stopOnce sync.Once
}

// session is one PTY with its process, a replay ring and its viewers.
type session struct {
	id, title string
	cmd       []string
	user      string
	createdAt time.Time
	pty       *os.File
	proc      *exec.Cmd
	pid       int
	exited    chan struct{}
	exitCode  int

	mu           sync.Mutex
	ring         byteRing
	viewers      map[*viewer]struct{}
	lastActivity time.Time
	cols, rows   int
}

// viewer is one attached WebSocket. A viewer too slow to keep up is
// dropped rather than allowed to stall the PTY for everyone.
type viewer struct {
	ch      chan []byte
	dropped chan struct{}
}

// byteRing keeps the last len(buf) bytes written. Bytes, not strings: a
// multi-byte character split across reads survives (the reference's
// string buffer dropped such chunks).
type byteRing struct {
	buf   []byte
	start int
	n     int
}

func (r *byteRing) write(p []byte) {
	size := len(r.buf)
	if len(p) >= size {
		copy(r.buf, p[len(p)-size:])
		r.start, r.n = 0, size
		return
	}
	end := (r.start + r.n) % size
	k := copy(r.buf[end:], p)
	copy(r.buf, p[k:])
	r.n += len(p)
	if r.n > size {
		r.start = (r.start + r.n - size) % size
		r.n = size
	}
}

func (r *byteRing) bytes() []byte {
	out := make([]byte, 0, r.n)
	first := min(r.n, len(r.buf)-r.start)
	out = append(out, r.buf[r.start:r.start+first]...)
	return append(out, r.buf[:r.n-first]...)
}

func newTerminals(s *Server) *terminals {
	t := &terminals{s: s, sessions: map[string]*session{}, stop: make(chan struct{})}
	go t.sweep()
	return t
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sweep closes sessions nobody watches and nothing writes to.
func (t *terminals) sweep() {
	every := min(max(t.s.opts.TerminalIdle/4, minSweepEvery), maxSweepEvery)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		var idle []*session
		t.mu.Lock()
		for _, ss := range t.sessions {
			if ss == nil {
				continue // reserved by a create still starting its shell
			}
			ss.mu.Lock()
			if len(ss.viewers) == 0 && time.Since(ss.lastActivity) >= t.s.opts.TerminalIdle {
				idle = append(idle, ss)
			}
			ss.mu.Unlock()
		}
		t.mu.Unlock()
		for _, ss := range idle {
			t.s.log.Info("closing idle terminal", "terminal_id", ss.id)
			t.close(ss)
		}
	}
}

func validDims(cols, rows int) (int, int, error) {
	if cols == 0 {
		cols = agent.DefaultTerminalCols
	}
	if rows == 0 {
		rows = agent.DefaultTerminalRows
	}
	if cols < 1 || cols > agent.MaxTerminalDimension {
		return 0, 0, errBadField("cols", "must be in [1, %d]", agent.MaxTerminalDimension)
	}
	if rows < 1 || rows > agent.MaxTerminalDimension {
		return 0, 0, errBadField("rows", "must be in [1, %d]", agent.MaxTerminalDimension)
	}
	return cols, rows, nil
}

func (t *terminals) create(req agent.TerminalRequest) (*session, error) {
	cols, rows, err := validDims(req.Cols, req.Rows)
	if err != nil {
		return nil, err
	}
	argv := req.Cmd
	if len(argv) == 0 {
		id, err := resolveUser("user", req.User)
		if err != nil {
			return nil, err
		}
		argv = []string{defaultShell(id), "-l"}
	}
	env := map[string]string{"TERM": "xterm-256color"}
	for k, v := range req.Env {
		env[k] = v
	}
	prep, err := t.s.prepare(commandSpec{argv: argv, env: env, cwd: req.Cwd, user: req.User})
	if err != nil {
		if ae := (*apiError)(nil); errors.As(err, &ae) && ae.field == "argv" {
			ae.field, ae.detail = "cmd", "cmd"+ae.detail[len("argv"):]
		}
		return nil, err
	}
	t.mu.Lock()
	if len(t.sessions) >= t.s.opts.MaxTerminals {
		t.mu.Unlock()
		return nil, errConflict(agent.CodeLimitReached, "at most %d terminals", t.s.opts.MaxTerminals)
	}
	// Reserve the slot so concurrent creates cannot overshoot the limit.
	id := newID()
	t.sessions[id] = nil
	t.mu.Unlock()

	cmd := &exec.Cmd{Path: prep.path, Args: prep.argv, Env: prep.env, Dir: prep.dir}
	attrs := &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: prep.id.cred, Pdeathsig: syscall.SIGKILL}
	f, err := pty.StartWithAttrs(cmd, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}, attrs)
	if err != nil {
		t.mu.Lock()
		delete(t.sessions, id)
		t.mu.Unlock()
		return nil, startError(err)
	}
	now := time.Now()
	title := req.Title
	if title == "" {
		title = "Terminal " + id[:8]
	}
	ss := &session{
		id: id, title: title, cmd: argv, user: prep.id.name, createdAt: now,
		pty: f, proc: cmd, pid: cmd.Process.Pid, exited: make(chan struct{}),
		ring:    byteRing{buf: make([]byte, agent.TerminalReplayBytes)},
		viewers: map[*viewer]struct{}{}, lastActivity: now, cols: cols, rows: rows,
	}
	t.mu.Lock()
	t.sessions[id] = ss
	t.mu.Unlock()
	go t.pump(ss)
	return ss, nil
}

func defaultShell(id *identity) string {
	for _, sh := range []string{id.shell, os.Getenv("SHELL"), "/bin/bash", "/bin/sh"} {
		if sh != "" && executable(sh) == nil {
			return sh
		}
	}
	return "/bin/sh"
}

// pump copies PTY output to the ring and the viewers until the PTY
// closes, then reaps the process and retires the session.
func (t *terminals) pump(ss *session) {
	buf := make([]byte, ptyReadSize)
	for {
		n, err := ss.pty.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			ss.mu.Lock()
			ss.ring.write(chunk)
			ss.lastActivity = time.Now()
			for v := range ss.viewers {
				select {
				case v.ch <- chunk:
				default:
					delete(ss.viewers, v)
					close(v.dropped)
				}
			}
			ss.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	_ = ss.proc.Wait()
	code, _ := exitInfo(ss.proc.ProcessState)
	ss.exitCode = code
	ss.pty.Close()
	t.mu.Lock()
	if t.sessions[ss.id] == ss {
		delete(t.sessions, ss.id)
	}
	t.mu.Unlock()
	close(ss.exited)
}

// close hangs up the session's process group, then kills what is left.
func (t *terminals) close(ss *session) {
	_ = signalGroup(ss.pid, syscall.SIGHUP)
	_ = ss.pty.Close()
	select {
	case <-ss.exited:
		return
	case <-time.After(terminalHUPWait):
	}
	killGroup(ss.pid)
	<-ss.exited
}

func (t *terminals) closeAll() {
	t.stopOnce.Do(func() { close(t.stop) })
	t.mu.Lock()
	var all []*session
	for _, ss := range t.sessions {
		if ss != nil {
			all = append(all, ss)
		}
	}
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, ss := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.close(ss)
		}()
	}
	wg.Wait()
}

func (t *terminals) get(id string) (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ss := t.sessions[id]
	if ss == nil {
		return nil, errNotFound("terminal %s does not exist", id)
	}
	return ss, nil
}

func (ss *session) info() agent.TerminalInfo {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return agent.TerminalInfo{
		ID: ss.id, Title: ss.title, Cmd: ss.cmd, User: ss.user, PID: ss.pid,
		Cols: ss.cols, Rows: ss.rows, Viewers: len(ss.viewers),
		CreatedAt: ss.createdAt.UTC(), LastActivity: ss.lastActivity.UTC(),
	}
}

func (ss *session) resize(cols, rows int) error {
	cols, rows, err := validDims(cols, rows)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	// TIOCSWINSZ makes the kernel send SIGWINCH to the foreground group.
	if err := pty.Setsize(ss.pty, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}); err != nil {
		return errConflict(agent.CodeConflict, "resize terminal %s: %v", ss.id, err)
	}
	ss.cols, ss.rows = cols, rows
	return nil
}

func (ss *session) input(p []byte) {
	ss.mu.Lock()
	ss.lastActivity = time.Now()
	ss.mu.Unlock()
	_, _ = ss.pty.Write(p)
}

// terminalControl recognises a control message: a JSON object with a
// known type. Anything else in a text frame is what the user typed.
func terminalControl(data []byte) (agent.TerminalControl, bool) {
	var m agent.TerminalControl
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &m) != nil {
		return m, false
	}
	return m, m.Type == agent.TerminalResize
}

// HTTP handlers.

func (s *Server) createTerminal(w http.ResponseWriter, r *http.Request) error {
	var req agent.TerminalRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	ss, err := s.terms.create(req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ss.info())
}

func (s *Server) listTerminals(w http.ResponseWriter, r *http.Request) error {
	s.terms.mu.Lock()
	var all []*session
	for _, ss := range s.terms.sessions {
		if ss != nil {
			all = append(all, ss)
		}
	}
	s.terms.mu.Unlock()
	out := agent.TerminalList{Terminals: []agent.TerminalInfo{}}
	for _, ss := range all {
		out.Terminals = append(out.Terminals, ss.info())
	}
	sort.Slice(out.Terminals, func(i, j int) bool { return out.Terminals[i].CreatedAt.Before(out.Terminals[j].CreatedAt) })
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteTerminal(w http.ResponseWriter, r *http.Request) error {
	ss, err := s.terms.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	s.terms.close(ss)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) resizeTerminal(w http.ResponseWriter, r *http.Request) error {
	ss, err := s.terms.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	var req agent.ResizeRequest
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	if err := ss.resize(req.Cols, req.Rows); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ss.info())
}

// attachTerminal is GET /terminals/{id}/attach; see agent.TerminalControl.
func (s *Server) attachTerminal(w http.ResponseWriter, r *http.Request) error {
	ss, err := s.terms.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	ss.mu.Lock()
	full := len(ss.viewers) >= maxViewers
	ss.mu.Unlock()
	if full {
		return errConflict(agent.CodeLimitReached, "terminal %s already has %d viewers", ss.id, maxViewers)
	}
	conn, _ := acceptWS(w, r)
	if conn == nil {
		return nil
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	// Snapshot the ring and register in one critical section, so the
	// viewer sees every byte exactly once.
	v := &viewer{ch: make(chan []byte, viewerQueue), dropped: make(chan struct{})}
	ss.mu.Lock()
	replay := ss.ring.bytes()
	ss.viewers[v] = struct{}{}
	ss.lastActivity = time.Now()
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		if _, ok := ss.viewers[v]; ok {
			delete(ss.viewers, v)
		}
		ss.lastActivity = time.Now()
		ss.mu.Unlock()
	}()
	if len(replay) > 0 {
		if err := conn.Write(ctx, websocket.MessageBinary, replay); err != nil {
			return nil
		}
	}

	go func() {
		defer cancel()
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				if m, ok := terminalControl(data); ok {
					if m.Type == agent.TerminalResize {
						_ = ss.resize(m.Cols, m.Rows)
					}
					continue
				}
			}
			// Binary messages, and text that is not a control message: a
			// browser's or websocat's typing arrives as text frames.
			ss.input(data)
		}
	}()

	for {
		select {
		case b := <-v.ch:
			if err := conn.Write(ctx, websocket.MessageBinary, b); err != nil {
				return nil
			}
		case <-v.dropped:
			conn.Close(websocket.StatusPolicyViolation, "viewer too slow")
			return nil
		case <-ss.exited:
			// pump delivered every chunk before closing exited.
			for {
				select {
				case b := <-v.ch:
					if err := conn.Write(ctx, websocket.MessageBinary, b); err != nil {
						return nil
					}
					continue
				default:
				}
				break
			}
			code := ss.exitCode
			msg, _ := json.Marshal(agent.TerminalControl{Type: agent.TerminalExit, ExitCode: &code})
			_ = conn.Write(ctx, websocket.MessageText, msg)
			conn.Close(websocket.StatusNormalClosure, "")
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
