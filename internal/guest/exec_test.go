package guest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/agent"
)

func TestExecForms(t *testing.T) {
	a := startAgent(t, nil)
	sub := filepath.Join(a.root, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		req        agent.ExecRequest
		wantOut    string
		wantErrOut string
		wantCode   int
	}{
		{"argv", agent.ExecRequest{Argv: []string{"echo", "a b", "c"}}, "a b c\n", "", 0},
		{"argv is not a shell", agent.ExecRequest{Argv: []string{"echo", "$HOME", ";", "exit 3"}}, "$HOME ; exit 3\n", "", 0},
		{"shell pipes and status", agent.ExecRequest{Shell: "printf 'x\\ny\\n' | wc -l; echo oops >&2; exit 4"}, "2\n", "oops\n", 4},
		{"env", agent.ExecRequest{Shell: `printf %s "$GREETING"`, Env: map[string]string{"GREETING": "héllo"}}, "héllo", "", 0},
		{"env PATH finds tools", agent.ExecRequest{Argv: []string{"mytool"}, Env: map[string]string{"PATH": "/nonexistent:" + filepath.Join(a.dir, "bin")}}, "from mytool\n", "", 0},
		{"cwd", agent.ExecRequest{Argv: []string{"pwd"}, Cwd: sub}, sub + "\n", "", 0},
		{"default cwd is the workdir", agent.ExecRequest{Argv: []string{"pwd"}}, a.root + "\n", "", 0},
		{"stdin", agent.ExecRequest{Argv: []string{"cat"}, Stdin: "line1\nline2"}, "line1\nline2", "", 0},
		{"no stdin reads EOF", agent.ExecRequest{Shell: "cat; echo done"}, "done\n", "", 0},
		{"killed by signal", agent.ExecRequest{Shell: "kill -TERM $$"}, "", "", 128 + 15},
		{"command not found in shell", agent.ExecRequest{Shell: "no-such-cmd-xyz 2>/dev/null"}, "", "", 127},
	}
	bin := filepath.Join(a.dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "mytool"), []byte("#!/bin/sh\necho from mytool\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := a.c.Exec(ctxT(t, 10*time.Second), tt.req)
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			if res.ExitCode != tt.wantCode || res.Stdout != tt.wantOut || res.Stderr != tt.wantErrOut {
				t.Fatalf("got code %d stdout %q stderr %q; want %d %q %q", res.ExitCode, res.Stdout, res.Stderr, tt.wantCode, tt.wantOut, tt.wantErrOut)
			}
			if res.TimedOut || res.Truncated {
				t.Fatalf("unexpected flags: %+v", res)
			}
		})
	}
}

func TestExecSignalNameAndBase64(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 10*time.Second)
	res, err := a.c.Exec(ctx, agent.ExecRequest{Shell: "kill -KILL $$"})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("got %d %q, want 137 SIGKILL", res.ExitCode, res.Signal)
	}
	res, err = a.c.Exec(ctx, agent.ExecRequest{Shell: `printf '\377\000\001'`, Encoding: agent.EncodingBase64})
	if err != nil {
		t.Fatal(err)
	}
	got, err := base64.StdEncoding.DecodeString(res.Stdout)
	if err != nil || res.Encoding != agent.EncodingBase64 || !bytes.Equal(got, []byte{0xff, 0, 1}) {
		t.Fatalf("base64 output %q (%v), encoding %q", res.Stdout, err, res.Encoding)
	}
}

// The reference lost ~30% of exit codes to a reaper racing its waits;
// every one of these must come back exact.
func TestExecExitCodesExactUnderConcurrency(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 60*time.Second)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := i % 256
			if i >= 128 {
				want = 255 - i%128
			}
			res, err := a.c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("exit %d", want)}})
			switch {
			case err != nil:
				errs <- fmt.Sprintf("exec %d: %v", i, err)
			case res.ExitCode != want:
				errs <- fmt.Sprintf("exec %d: exit code %d, want %d", i, res.ExitCode, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestExecTimeoutKillsWholeGroup(t *testing.T) {
	a := startAgent(t, nil)
	res, err := a.c.Exec(ctxT(t, 20*time.Second), agent.ExecRequest{
		Shell:     "sleep 300 & echo $!; wait",
		TimeoutMs: 500,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("want timed out with SIGKILL, got %+v", res)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
	if err != nil {
		t.Fatalf("grandchild pid from %q: %v", res.Stdout, err)
	}
	eventually(t, 5*time.Second, "grandchild sleep to die", func() bool { return processGone(pid) })
}

func TestExecClientDisconnectKillsGroup(t *testing.T) {
	a := startAgent(t, nil)
	pidFile := filepath.Join(a.dir, "pids")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := a.c.Exec(ctx, agent.ExecRequest{Shell: "sleep 300 & echo $! > " + pidFile + ".tmp; mv " + pidFile + ".tmp " + pidFile + "; wait"})
		errc <- err
	}()
	var pid int
	eventually(t, 10*time.Second, "pid file", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("exec returned no error after its context was cancelled")
	}
	eventually(t, 5*time.Second, "grandchild sleep to die after disconnect", func() bool { return processGone(pid) })
}

func TestExecOutputCap(t *testing.T) {
	a := startAgent(t, nil)
	res, err := a.c.Exec(ctxT(t, 10*time.Second), agent.ExecRequest{
		Shell:          "head -c 200000 /dev/zero | tr '\\0' a; echo tail >&2; exit 5",
		MaxOutputBytes: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != 1000 || strings.Trim(res.Stdout, "a") != "" {
		t.Fatalf("stdout has %d bytes, want 1000 'a'", len(res.Stdout))
	}
	if !res.Truncated || res.ExitCode != 5 || res.Stderr != "tail\n" {
		t.Fatalf("want truncated, exit 5 and full stderr; got truncated=%v code=%d stderr=%q", res.Truncated, res.ExitCode, res.Stderr)
	}
}

func TestExecLoginShell(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("no bash")
	}
	a := startAgent(t, nil)
	res, err := a.c.Exec(ctxT(t, 10*time.Second), agent.ExecRequest{Shell: "shopt -q login_shell && echo login", Login: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !strings.HasSuffix(res.Stdout, "login\n") {
		t.Fatalf("login shell: %+v", res)
	}
}

func TestExecRejectsBadRequests(t *testing.T) {
	a := startAgent(t, nil)
	plain := filepath.Join(a.dir, "plain")
	garbage := filepath.Join(a.dir, "garbage")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(garbage, []byte("\x00\x01\x02\x03garbage"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		req    agent.ExecRequest
		status int
		code   string
		field  string
	}{
		{"both forms", agent.ExecRequest{Argv: []string{"true"}, Shell: "true"}, 400, agent.CodeBadRequest, "argv"},
		{"no form", agent.ExecRequest{}, 400, agent.CodeBadRequest, "argv"},
		{"missing program", agent.ExecRequest{Argv: []string{"no-such-program-xyz"}}, 400, agent.CodeBadRequest, "argv"},
		{"not executable", agent.ExecRequest{Argv: []string{plain}}, 400, agent.CodeBadRequest, "argv"},
		{"exec format error", agent.ExecRequest{Argv: []string{garbage}}, 400, agent.CodeStartFailed, "argv"},
		{"missing cwd", agent.ExecRequest{Argv: []string{"true"}, Cwd: "/no/such/dir"}, 400, agent.CodeBadRequest, "cwd"},
		{"relative cwd", agent.ExecRequest{Argv: []string{"true"}, Cwd: "rel"}, 400, agent.CodeBadRequest, "cwd"},
		{"timeout too long", agent.ExecRequest{Argv: []string{"true"}, TimeoutMs: 3600001}, 400, agent.CodeBadRequest, "timeoutMs"},
		{"negative timeout", agent.ExecRequest{Argv: []string{"true"}, TimeoutMs: -1}, 400, agent.CodeBadRequest, "timeoutMs"},
		{"output cap too big", agent.ExecRequest{Argv: []string{"true"}, MaxOutputBytes: 17 << 20}, 400, agent.CodeBadRequest, "maxOutputBytes"},
		{"unknown user", agent.ExecRequest{Argv: []string{"true"}, User: "no-such-user-xyz"}, 400, agent.CodeBadRequest, "user"},
		{"bad env name", agent.ExecRequest{Argv: []string{"true"}, Env: map[string]string{"A=B": "x"}}, 400, agent.CodeBadRequest, "env"},
		{"stdinStream outside stream", agent.ExecRequest{Argv: []string{"true"}, StdinStream: true}, 400, agent.CodeBadRequest, "stdinStream"},
		{"bad encoding", agent.ExecRequest{Argv: []string{"true"}, Encoding: "hex"}, 400, agent.CodeBadRequest, "encoding"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.c.Exec(ctxT(t, 10*time.Second), tt.req)
			wantAgentError(t, err, tt.status, tt.code, tt.field)
		})
	}
}

func TestExecAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	a := startAgent(t, nil)
	res, err := a.c.Exec(ctxT(t, 10*time.Second), agent.ExecRequest{Shell: `id -u; echo "$USER"`, User: "nobody", Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	if want := u.Uid + "\nnobody\n"; res.Stdout != want {
		t.Fatalf("got %q, want %q", res.Stdout, want)
	}
}

func TestExecStream(t *testing.T) {
	a := startAgent(t, nil)
	ctx := ctxT(t, 20*time.Second)

	t.Run("output stdin and exit code", func(t *testing.T) {
		st, err := a.c.ExecStream(ctx, agent.ExecRequest{Shell: "echo out; echo err >&2; cat; exit 3", StdinStream: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.WriteStdin(ctx, []byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseStdin(ctx); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		ev, err := st.Wait(ctx, &out, &errOut)
		if err != nil {
			t.Fatal(err)
		}
		if ev.ExitCode != 3 || out.String() != "out\nhello\n" || errOut.String() != "err\n" {
			t.Fatalf("got code %d stdout %q stderr %q", ev.ExitCode, out.String(), errOut.String())
		}
	})

	t.Run("kill signals the group", func(t *testing.T) {
		st, err := a.c.ExecStream(ctx, agent.ExecRequest{Shell: "echo started; sleep 300"})
		if err != nil {
			t.Fatal(err)
		}
		pr := &signalWriter{want: "started", hit: make(chan struct{})}
		done := make(chan struct{})
		var ev *agent.StreamEvent
		var werr error
		go func() {
			defer close(done)
			ev, werr = st.Wait(ctx, pr, nil)
		}()
		select {
		case <-pr.hit:
		case <-ctx.Done():
			t.Fatal("no output before kill")
		}
		if err := st.Kill(ctx, "TERM"); err != nil {
			t.Fatal(err)
		}
		<-done
		if werr != nil {
			t.Fatal(werr)
		}
		if ev.ExitCode != 143 || ev.Signal != "SIGTERM" {
			t.Fatalf("got %+v, want 143 SIGTERM", ev)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		st, err := a.c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"sleep", "300"}, TimeoutMs: 200})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := st.Wait(ctx, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !ev.TimedOut || ev.ExitCode != 137 {
			t.Fatalf("got %+v, want timed out 137", ev)
		}
	})

	t.Run("bad request", func(t *testing.T) {
		st, err := a.c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"no-such-program-xyz"}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Wait(ctx, nil, nil)
		wantAgentError(t, err, 0, agent.CodeBadRequest, "")
	})
}

// signalWriter closes hit once the written bytes contain want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	hit  chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.hit) })
	}
	return len(p), nil
}

func TestUnknownRouteIsJSON404(t *testing.T) {
	a := startAgent(t, nil)
	req, _ := http.NewRequest(http.MethodGet, "http://agent/nope", nil)
	resp, err := a.c.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
