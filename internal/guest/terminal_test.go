package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"atelier/internal/agent"
)

// screen accumulates what a viewer receives.
type screen struct {
	conn *websocket.Conn
	buf  bytes.Buffer
	ctrl []agent.TerminalControl
	err  error
}

// until reads until the output contains want (or a read fails).
func (s *screen) until(t *testing.T, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !strings.Contains(s.buf.String(), want) {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v; screen so far %q", want, err, s.buf.String())
		}
		if typ == websocket.MessageBinary {
			s.buf.Write(data)
		}
	}
}

// untilClosed reads until the agent closes the connection.
func (s *screen) untilClosed(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			s.err = err
			return
		}
		if typ == websocket.MessageBinary {
			s.buf.Write(data)
			continue
		}
		var c agent.TerminalControl
		if err := json.Unmarshal(data, &c); err != nil {
			t.Fatalf("bad control message %q", data)
		}
		s.ctrl = append(s.ctrl, c)
	}
}

func attach(t *testing.T, a *testAgent, id string) *screen {
	t.Helper()
	conn, err := a.c.AttachTerminal(context.Background(), id)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return &screen{conn: conn}
}

func typeIn(t *testing.T, s *screen, text string) {
	t.Helper()
	if err := s.conn.Write(context.Background(), websocket.MessageBinary, []byte(text)); err != nil {
		t.Fatalf("type: %v", err)
	}
}

func TestTerminalSession(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	ti, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"/bin/sh"}, Env: map[string]string{"PS1": "$ "}, Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	if ti.ID == "" || ti.PID <= 0 || ti.Cols != 80 || ti.Rows != 24 {
		t.Fatalf("create answered %+v", ti)
	}
	v1 := attach(t, a, ti.ID)
	typeIn(t, v1, "echo h''i\n")
	v1.until(t, "hi\r\n") // the echoed command line has h''i, only the output has hi

	ti, err = a.c.ResizeTerminal(ctx, ti.ID, 100, 40)
	if err != nil || ti.Cols != 100 || ti.Rows != 40 {
		t.Fatalf("resize %+v %v", ti, err)
	}
	typeIn(t, v1, "stty size\n")
	v1.until(t, "40 100")
	// Resize through the control channel too.
	if err := agent.SendResize(ctx, v1.conn, 90, 30); err != nil {
		t.Fatal(err)
	}
	typeIn(t, v1, "stty size\n")
	v1.until(t, "30 90")

	// A late viewer first gets the replay: the screen so far.
	v2 := attach(t, a, ti.ID)
	v2.until(t, "hi\r\n")
	list, err := a.c.Terminals(ctx)
	if err != nil || len(list) != 1 || list[0].Viewers != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
	// Both viewers see new output.
	typeIn(t, v2, "echo sec''ond\n")
	v1.until(t, "second\r\n")
	v2.until(t, "second\r\n")

	if err := a.c.DeleteTerminal(ctx, ti.ID); err != nil {
		t.Fatal(err)
	}
	v1.untilClosed(t)
	if websocket.CloseStatus(v1.err) != websocket.StatusNormalClosure || len(v1.ctrl) != 1 || v1.ctrl[0].Type != agent.TerminalExit {
		t.Fatalf("viewer end: %v, controls %+v", v1.err, v1.ctrl)
	}
	if list, err := a.c.Terminals(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after delete %+v %v", list, err)
	}
	err = a.c.DeleteTerminal(ctx, ti.ID)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")
	_, err = a.c.AttachTerminal(ctx, ti.ID)
	wantAgentError(t, err, 404, agent.CodeNotFound, "")
}

func TestTerminalExitCodeReachesViewer(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	ti, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"/bin/sh"}, Env: map[string]string{"PS1": "$ "}})
	if err != nil {
		t.Fatal(err)
	}
	v := attach(t, a, ti.ID)
	typeIn(t, v, "exit 5\n")
	v.untilClosed(t)
	if len(v.ctrl) != 1 || v.ctrl[0].ExitCode == nil || *v.ctrl[0].ExitCode != 5 {
		t.Fatalf("controls %+v (close %v)", v.ctrl, v.err)
	}
	eventually(t, 5*time.Second, "session to be gone", func() bool {
		l, err := a.c.Terminals(ctx)
		return err == nil && len(l) == 0
	})
}

func TestTerminalIdleSweep(t *testing.T) {
	// The idle period is long against the busy terminal's 50 ms output, so a
	// loaded machine that starves it for a while does not make it idle.
	a := startAgent(t, func(o *Options) { o.TerminalIdle = time.Second })
	ctx := ctxT(t, 30*time.Second)
	watched, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	attach(t, a, watched.ID)
	busy, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sh", "-c", "while :; do echo x; sleep 0.05; done"}})
	if err != nil {
		t.Fatal(err)
	}
	idle, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	ids := func() map[string]bool {
		l, err := a.c.Terminals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, ti := range l {
			m[ti.ID] = true
		}
		return m
	}
	eventually(t, 10*time.Second, "idle terminal to be swept", func() bool { return !ids()[idle.ID] })
	if !processGone(idle.PID) {
		t.Fatal("swept terminal's process still alive")
	}
	// A viewer or fresh output keeps a session through several periods.
	time.Sleep(2500 * time.Millisecond)
	if m := ids(); !m[watched.ID] || !m[busy.ID] || len(m) != 2 {
		t.Fatalf("after sweeps: %v (watched %s, busy %s)", m, watched.ID, busy.ID)
	}
}

func TestTerminalLimitsAndValidation(t *testing.T) {
	a := startAgent(t, func(o *Options) { o.MaxTerminals = 1 })
	ctx := ctxT(t, 30*time.Second)
	_, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sleep", "300"}, Cols: 5000})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "cols")
	_, err = a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"no-such-program-xyz"}})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "cmd")
	if _, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sleep", "300"}}); err != nil {
		t.Fatal(err)
	}
	_, err = a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"sleep", "300"}})
	wantAgentError(t, err, 409, agent.CodeLimitReached, "")
}

func TestByteRing(t *testing.T) {
	tests := []struct {
		name   string
		size   int
		writes []string
		want   string
	}{
		{"empty", 4, nil, ""},
		{"fits", 8, []string{"ab", "cd"}, "abcd"},
		{"exact", 4, []string{"ab", "cd"}, "abcd"},
		{"wraps", 4, []string{"abc", "de"}, "bcde"},
		{"wraps twice", 4, []string{"abc", "def", "g"}, "defg"},
		{"oversized write", 4, []string{"ab", "cdefgh"}, "efgh"},
		{"many small", 3, []string{"a", "b", "c", "d", "e"}, "cde"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := byteRing{buf: make([]byte, tt.size)}
			for _, w := range tt.writes {
				r.write([]byte(w))
			}
			if got := string(r.bytes()); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTerminalIdleSweepSkipsReservations: a create reserves its id with a nil
// session while its shell starts; a sweep in that window must skip it, not
// dereference it (it panicked the agent under load).
func TestTerminalIdleSweepSkipsReservations(t *testing.T) {
	s := NewServer(Options{SandboxID: "sbx123", TerminalIdle: 10 * time.Millisecond, LogDir: t.TempDir()})
	defer s.terms.closeAll()
	s.terms.mu.Lock()
	s.terms.sessions["reserved"] = nil
	s.terms.mu.Unlock()
	time.Sleep(3 * minSweepEvery)
	s.terms.mu.Lock()
	_, ok := s.terms.sessions["reserved"]
	s.terms.mu.Unlock()
	if !ok {
		t.Fatal("the sweep dropped a reservation")
	}
}

// TestTerminalTextFrames: browsers and websocat send what the user types
// as text frames; they reach the PTY. A text frame that is a control
// message (resize) is not typed in.
func TestTerminalTextFrames(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 30*time.Second)
	ti, err := a.c.CreateTerminal(ctx, agent.TerminalRequest{Cmd: []string{"/bin/sh"}, Env: map[string]string{"PS1": "$ "}})
	if err != nil {
		t.Fatal(err)
	}
	v := attach(t, a, ti.ID)
	for _, text := range []string{"echo te''xt\n", `{"type":"resize","cols":70,"rows":20}`, "{not json}\n", "stty size\n"} {
		if err := v.conn.Write(ctx, websocket.MessageText, []byte(text)); err != nil {
			t.Fatal(err)
		}
	}
	v.until(t, "text\r\n")
	v.until(t, "{not json}")
	v.until(t, "20 70")
	if strings.Contains(v.buf.String(), `"type":"resize"`) {
		t.Fatalf("a control message was typed into the terminal: %q", v.buf.String())
	}
}
