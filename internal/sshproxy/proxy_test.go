package sshproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"atelier/internal/auth"
)

func TestHostKeyPersisted(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	path := filepath.Join(t.TempDir(), "data", HostKeyFile)
	k1, err := LoadOrCreateHostKey(path, log)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v %v, want mode 0600", fi.Mode(), err)
	}
	if k1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Errorf("host key type %s", k1.PublicKey().Type())
	}
	os.Chmod(path, 0o644)
	k2, err := LoadOrCreateHostKey(path, log)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1.PublicKey().Marshal(), k2.PublicKey().Marshal()) {
		t.Error("a second start made a new host key")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("loosened host key left at %v", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left next to the key: %v", entries)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadOrCreateHostKey(path, log); err == nil {
		t.Error("a corrupt host key was accepted")
	}
}

// TestAdmission covers who gets in: the owner's registered key; not an
// unknown, expired or deleted key, a disallowed user's key, or another
// user's key; and what an admitted client is told when there is no
// running sandbox of theirs behind the name.
func TestAdmission(t *testing.T) {
	e := newEnv(t, nil)
	local := e.user(t, auth.LocalUserID, 0)
	octo := e.user(t, "octocat", 1)
	mallory := e.user(t, "mallory", 2)
	eve := e.user(t, "eve", 3) // not in allowedUsers

	mine := e.sandbox(t, local.ID)
	octoBox := e.sandbox(t, octo.ID)
	stopped := e.sandbox(t, local.ID)
	if _, err := e.sbx.Stop(ctxT(t, 30*time.Second), stopped); err != nil {
		t.Fatal(err)
	}

	localKey, _ := e.key(t, local.ID, nil)
	octoKey, _ := e.key(t, octo.ID, nil)
	malloryKey, _ := e.key(t, mallory.ID, nil)
	eveKey, _ := e.key(t, eve.ID, nil)
	past := time.Now().Add(-time.Minute)
	expiredKey, _ := e.key(t, local.ID, &past)
	unknownKey, _ := e.key(t, "", nil)

	for _, tc := range []struct {
		name   string
		user   string
		key    ssh.Signer
		denied bool   // authentication fails
		banner string // ...with this banner
		out    string // or the command prints this and exits 3
		stderr string // or the session says this and exits 1
	}{
		{name: "owner", user: mine, key: localKey, out: "ok"},
		{name: "github owner", user: octoBox, key: octoKey, out: "ok"},
		{name: "unknown key", user: mine, key: unknownKey, denied: true, banner: "not registered"},
		{name: "expired key", user: mine, key: expiredKey, denied: true, banner: "expired or was deleted"},
		{name: "user not allowed", user: octoBox, key: eveKey, denied: true, banner: "not registered to a user allowed"},
		{name: "another user's sandbox", user: mine, key: malloryKey, stderr: "you have no sandbox " + mine},
		{name: "local user on a github user's sandbox", user: octoBox, key: localKey, stderr: "you have no sandbox " + octoBox},
		{name: "unknown sandbox", user: "zzzzzzzzzzzz", key: localKey, stderr: "you have no sandbox zzzzzzzzzzzz"},
		{name: "not a sandbox id", user: "root", key: localKey, stderr: `"root" is not a sandbox id`},
		{name: "stopped sandbox", user: stopped, key: localKey, stderr: "sandbox " + stopped + " is stopped: start it with `atelier sandbox start " + stopped + "`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var banner strings.Builder
			cl, err := e.dial(tc.user, tc.key, &banner)
			if tc.denied {
				if err == nil {
					cl.Close()
					t.Fatal("admitted")
				}
				if !strings.Contains(banner.String(), tc.banner) {
					t.Errorf("banner %q, want it to contain %q", banner.String(), tc.banner)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer cl.Close()
			out, stderr, code := run(t, cl, "echo ok; exit 3", nil)
			if tc.out != "" {
				if strings.TrimSpace(out) != tc.out || code != 3 {
					t.Errorf("got %q (stderr %q) status %d, want %q status 3", out, stderr, code, tc.out)
				}
				return
			}
			if out != "" || code != 1 || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("got stdout %q stderr %q status %d, want status 1 and %q", out, stderr, code, tc.stderr)
			}
			// Forwarding is refused with the same reason.
			_, err = cl.Dial("tcp", "127.0.0.1:1")
			var oe *ssh.OpenChannelError
			if !errors.As(err, &oe) || !strings.Contains(oe.Message, tc.stderr) {
				t.Errorf("forward on a refused connection: %v", err)
			}
		})
	}
}

func TestKeyDeletedOrExpiredStopsWorkingAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	local := e.user(t, auth.LocalUserID, 0)
	id := e.sandbox(t, local.ID)
	soon := time.Now().Add(time.Hour)
	signer, k := e.key(t, local.ID, &soon)

	cl, err := e.dial(id, signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if out, _, _ := run(t, cl, "echo before", nil); out != "before\n" {
		t.Fatalf("before: %q", out)
	}
	// Expiry is checked at each connection against the clock.
	e.now = func() time.Time { return soon.Add(time.Second) }
	if c2, err := e.dial(id, signer, nil); err == nil {
		c2.Close()
		t.Error("expired key admitted")
	}
	e.now = time.Now
	if err := e.st.DeleteSSHKey(context.Background(), local.ID, k.ID); err != nil {
		t.Fatal(err)
	}
	if c3, err := e.dial(id, signer, nil); err == nil {
		c3.Close()
		t.Error("deleted key admitted")
	}
	// A connection opened before keeps its sessions (as with OpenSSH).
	if out, _, _ := run(t, cl, "echo after", nil); out != "after\n" {
		t.Errorf("open connection after delete: %q", out)
	}
}

func TestBridge(t *testing.T) {
	e := newEnv(t, nil)
	_, _, cl := e.loggedIn(t)

	t.Run("stdin stdout stderr status", func(t *testing.T) {
		out, stderr, code := run(t, cl, "tr a-z A-Z; echo warn >&2; exit 7", strings.NewReader("hello"))
		if out != "HELLO" || stderr != "warn\n" || code != 7 {
			t.Errorf("got %q %q %d", out, stderr, code)
		}
	})
	t.Run("large output arrives before the status", func(t *testing.T) {
		out, _, code := run(t, cl, "head -c 3000000 /dev/zero; exit 5", nil)
		if len(out) != 3000000 || code != 5 {
			t.Errorf("got %d bytes, status %d", len(out), code)
		}
	})
	t.Run("env and signal", func(t *testing.T) {
		s, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Setenv("ATELIER_T", "v1"); err != nil {
			t.Fatal(err)
		}
		out, _ := s.StdoutPipe()
		if err := s.Start(`echo "$ATELIER_T"; exec sleep 30`); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "v1\n" {
			t.Errorf("env: %q", line)
		}
		if err := s.Signal(ssh.SIGTERM); err != nil {
			t.Fatal(err)
		}
		var ee *ssh.ExitError
		if err := s.Wait(); !errors.As(err, &ee) || ee.Signal() != "TERM" {
			t.Errorf("wait after SIGTERM: %v", err)
		}
	})
	t.Run("pty", func(t *testing.T) {
		s, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.RequestPty("xterm", 30, 90, ssh.TerminalModes{}); err != nil {
			t.Fatal(err)
		}
		b, err := s.Output("stty size; tty")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "30 90\r\n/dev/pts/") {
			t.Errorf("pty output %q", b)
		}
	})
	t.Run("sftp", func(t *testing.T) {
		sc, err := sftp.NewClient(cl)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		data := bytes.Repeat([]byte{0, 1, 2, 250}, 300000)
		f, err := sc.Create("through-proxy.bin")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		f.Close()
		r, err := sc.Open("through-proxy.bin")
		if err != nil {
			t.Fatal(err)
		}
		back, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(back, data) {
			t.Errorf("sftp round trip: %d bytes back of %d", len(back), len(data))
		}
	})
	t.Run("local forwarding", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "guest "+r.URL.Path) })}
		go hs.Serve(ln)
		defer hs.Close()
		c, err := cl.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /fwd HTTP/1.0\r\n\r\n")
		b, _ := io.ReadAll(c)
		if !strings.HasSuffix(string(b), "guest /fwd") {
			t.Errorf("forwarded answer %q", b)
		}
		_, err = cl.Dial("tcp", "127.0.0.1:1")
		var oe *ssh.OpenChannelError
		if !errors.As(err, &oe) || oe.Reason != ssh.ConnectionFailed {
			t.Errorf("forward to a closed port: %v", err)
		}
	})
	t.Run("remote forwarding refused", func(t *testing.T) {
		if _, err := cl.Listen("tcp", "127.0.0.1:0"); err == nil {
			t.Error("tcpip-forward accepted")
		}
	})
}

func TestDisconnectKillsAndStopEndsConnection(t *testing.T) {
	e := newEnv(t, nil)
	id, signer, cl := e.loggedIn(t)
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	pid := startSleeper(t, s)
	cl.Close() // the client vanishes mid-command
	waitGone(t, pid)

	// Stopping the sandbox ends the client's connection instead of leaving
	// it hanging.
	cl2, err := e.dial(id, signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	// A session proves the bridge to the agent is up (admission happens
	// after authentication, so a stop racing it would be refused instead).
	if _, _, code := run(t, cl2, "true", nil); code != 0 {
		t.Fatalf("true: status %d", code)
	}
	done := make(chan error, 1)
	go func() { done <- cl2.Wait() }()
	if _, err := e.sbx.Stop(ctxT(t, 30*time.Second), id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("client connection still open after the sandbox stopped")
	}
}

// TestClosingKillsAProgramIgnoringStdin checks that a program that never
// reads its stdin cannot outlive its channel: the client fills every buffer
// on the way (its window, the proxy's, the agent's) and closes the session.
func TestClosingKillsAProgramIgnoringStdin(t *testing.T) {
	e := newEnv(t, nil)
	_, _, cl := e.loggedIn(t)
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	pid := startSleeper(t, s)
	wrote := make(chan int, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		n := 0
		for n < 16<<20 {
			if _, err := in.Write(chunk); err != nil {
				break
			}
			n += len(chunk)
		}
		wrote <- n
	}()
	// Let the writes stall on the full buffers before closing.
	time.Sleep(500 * time.Millisecond)
	s.Close()
	waitGone(t, pid)
	if n := <-wrote; n >= 16<<20 {
		t.Errorf("%d bytes went into a program that reads nothing: nothing pushed back", n)
	}
	// The connection still works for the next session.
	s2, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.Output("echo again"); string(got) != "again\n" || err != nil {
		t.Errorf("next session: %q %v", got, err)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeStops checks that cancelling Serve closes client connections.
func TestServeStops(t *testing.T) {
	e := newEnv(t, nil)
	local := e.user(t, auth.LocalUserID, 0)
	signer, _ := e.key(t, local.ID, nil)
	id := e.sandbox(t, local.ID)
	p, err := New(e.proxy.o)
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	cl, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(p.HostKey()), Timeout: 10 * time.Second})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer cl.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := cl.NewSession(); err == nil {
		t.Error("client connection survived Serve's end")
	}
}

// TestUnknownGuestUser checks that a guest user the sandbox does not have
// is refused with the agent's reason, for sessions and forwards alike.
func TestUnknownGuestUser(t *testing.T) {
	e := newEnv(t, nil)
	local := e.user(t, auth.LocalUserID, 0)
	signer, _ := e.key(t, local.ID, nil)
	id := e.sandbox(t, local.ID)
	o := e.proxy.o
	o.GuestUser = "no-such-user-atlt"
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	cl, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: id, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(p.HostKey()), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, stderr, code := run(t, cl, "true", nil)
	want := `sandbox ` + id + ` cannot log you in: user: unknown user "no-such-user-atlt"`
	if code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("status %d, stderr %q; want 1 and %q", code, stderr, want)
	}
	if _, err := cl.Dial("tcp", "127.0.0.1:22"); err == nil || !strings.Contains(err.Error(), "cannot log you in") {
		t.Errorf("forward: %v", err)
	}
}

// TestAgentLostMidSession checks that a client whose sandbox agent dies is
// told so on stderr before its connection closes, instead of a bare
// "closed by remote host".
func TestAgentLostMidSession(t *testing.T) {
	e := newEnv(t, nil)
	id, _, cl := e.loggedIn(t)
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var stderr strings.Builder
	s.Stderr = &stderr
	out, _ := s.StdoutPipe()
	if err := s.Start("echo up; exec sleep 300"); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "up\n" {
		t.Fatalf("first line %q", line)
	}
	pid := agentPID(t, id)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err == nil {
		t.Error("session ended cleanly after its agent was killed")
	}
	if !strings.Contains(stderr.String(), "atelier: lost the connection to the sandbox") {
		t.Errorf("stderr %q", stderr.String())
	}
	done := make(chan error, 1)
	go func() { done <- cl.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("client connection still open after its agent died")
	}
}
