package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"atelier/internal/agent"
)

// TestMain lets the SSH server's "run SFTP as another user" path re-execute
// this test binary as `<binary> sftp-server`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "sftp-server" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// sshClient opens an SSH connection to the agent over an upgraded agent
// connection, as the manager's proxy does.
func sshClient(t *testing.T, c *agent.Client, user string) *ssh.Client {
	t.Helper()
	conn, err := c.DialUpgrade(ctxT(t, 10*time.Second), agent.SSHPath, agent.SSHProtocol)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{
		User: user, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
	})
	if err != nil {
		conn.Close()
		t.Fatalf("ssh handshake: %v", err)
	}
	cl := ssh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl
}

func newSession(t *testing.T, cl *ssh.Client) *ssh.Session {
	t.Helper()
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSSHExec(t *testing.T) {
	a := startAgent(t, nil)
	cl := sshClient(t, a.c, "")
	for _, tc := range []struct {
		name       string
		cmd        string
		env        map[string]string
		stdin      string
		out, errs  string
		code       int
		signal     string
		noExitInfo bool
	}{
		{name: "status", cmd: "echo ok; echo oops >&2; exit 3", out: "ok\n", errs: "oops\n", code: 3},
		{name: "success", cmd: "pwd", out: a.root + "\n"},
		{name: "env", cmd: `printf %s "$GREETING"`, env: map[string]string{"GREETING": "hi there"}, out: "hi there"},
		{name: "stdin", cmd: "tr a-z A-Z", stdin: "hello", out: "HELLO"},
		{name: "signal", cmd: "kill -TERM $$", signal: "TERM"},
		{name: "not found", cmd: "no-such-command-xyz", code: 127},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t, cl)
			for k, v := range tc.env {
				if err := s.Setenv(k, v); err != nil {
					t.Fatalf("setenv: %v", err)
				}
			}
			var out, errs bytes.Buffer
			s.Stdout, s.Stderr = &out, &errs
			s.Stdin = strings.NewReader(tc.stdin)
			err := s.Run(tc.cmd)
			var ee *ssh.ExitError
			switch {
			case tc.code == 0 && tc.signal == "":
				if err != nil {
					t.Fatalf("run: %v (stderr %q)", err, errs.String())
				}
			case !errors.As(err, &ee):
				t.Fatalf("run: %v, want an exit error", err)
			case ee.ExitStatus() != tc.code && tc.signal == "":
				t.Errorf("exit status %d, want %d", ee.ExitStatus(), tc.code)
			case ee.Signal() != tc.signal:
				t.Errorf("signal %q, want %q", ee.Signal(), tc.signal)
			}
			if out.String() != tc.out {
				t.Errorf("stdout %q, want %q", out.String(), tc.out)
			}
			if tc.errs != "" && errs.String() != tc.errs {
				t.Errorf("stderr %q, want %q", errs.String(), tc.errs)
			}
		})
	}
}

func TestSSHPTY(t *testing.T) {
	a := startAgent(t, nil)
	cl := sshClient(t, a.c, "")
	s := newSession(t, cl)
	if err := s.RequestPty("xterm-test", 40, 100, ssh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	in, _ := s.StdinPipe()
	pr, pw := io.Pipe()
	s.Stdout = pw
	if err := s.Start(`tty; echo "term=$TERM"; stty size; read go; stty size; exit 4`); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(lines)
	}()
	want := func(pred func(string) bool, what string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("output ended before %s", what)
				}
				if pred(l) {
					return
				}
			case <-timeout:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	want(func(l string) bool { return strings.HasPrefix(l, "/dev/pts/") }, "a pts name")
	want(func(l string) bool { return l == "term=xterm-test" }, "TERM from pty-req")
	want(func(l string) bool { return l == "40 100" }, "the requested size")
	if err := s.WindowChange(50, 120); err != nil {
		t.Fatal(err)
	}
	// window-change is handled before the next input: both travel in order
	// on the same channel, and the agent applies it synchronously.
	if _, err := in.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	want(func(l string) bool { return l == "50 120" }, "the new size")
	err := s.Wait()
	pw.Close()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 4 {
		t.Fatalf("wait: %v, want exit status 4", err)
	}
}

func TestSSHKillsGroupOnClose(t *testing.T) {
	a := startAgent(t, nil)
	cl := sshClient(t, a.c, "")

	// The client goes away while the command runs.
	s := newSession(t, cl)
	out, _ := s.StdoutPipe()
	if err := s.Start("sleep 300 & echo $!; wait"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || processGone(pid) {
		t.Fatalf("background pid %q: %v", line, err)
	}
	s.Close()
	eventually(t, 5*time.Second, "the background process killed with its channel", func() bool { return processGone(pid) })

	// The leader exits at once; its background child must not linger.
	s2 := newSession(t, cl)
	b, err := s2.Output("sleep 300 >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	eventually(t, 5*time.Second, "the orphaned background process killed", func() bool { return pid > 0 && processGone(pid) })

	// Shutting the agent down ends running sessions too.
	s3 := newSession(t, cl)
	out3, _ := s3.StdoutPipe()
	if err := s3.Start("echo $$; exec sleep 300"); err != nil {
		t.Fatal(err)
	}
	line, err = bufio.NewReader(out3).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, _ = strconv.Atoi(strings.TrimSpace(line))
	if err := a.srv.Shutdown(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the session's process killed by shutdown", func() bool { return pid > 0 && processGone(pid) })
}

func TestSSHSFTP(t *testing.T) {
	a := startAgent(t, nil)
	cl := sshClient(t, a.c, "")
	sc, err := sftp.NewClient(cl)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	wd, err := sc.Getwd()
	if err != nil || wd != a.root {
		t.Fatalf("sftp working directory %q (%v), want %q", wd, err, a.root)
	}
	data := bytes.Repeat([]byte("atelier\x00\xff"), 100000)
	f, err := sc.Create("up.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(filepath.Join(a.root, "up.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("uploaded file differs (%d bytes, %v)", len(got), err)
	}
	r, err := sc.Open(filepath.Join(a.root, "up.bin"))
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("downloaded file differs (%d bytes, %v)", len(back), err)
	}
	if _, err := sc.Stat("missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a missing file: %v", err)
	}
	// The subsystem ends with an exit status when the client hangs up
	// (OpenSSH's scp fails without one).
	ch, reqs, err := cl.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if ok, err := ch.SendRequest("subsystem", true, ssh.Marshal(struct{ Name string }{"sftp"})); !ok || err != nil {
		t.Fatalf("subsystem request: %v %v", ok, err)
	}
	ch.CloseWrite()
	status := -1
	for r := range reqs {
		if r.Type == "exit-status" && len(r.Payload) == 4 {
			status = int(r.Payload[3])
		}
	}
	if status != 0 {
		t.Errorf("sftp subsystem ended with status %d, want 0", status)
	}
}

// TestSSHSFTPAsAnotherUser runs the SFTP server as the session's user: a
// child with that user's credentials, not the root agent.
func TestSSHSFTPAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no nobody user")
	}
	// The child must be able to run the binary and enter the directory.
	shared, err := os.MkdirTemp("", "atlsftp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	bin := filepath.Join(shared, "agent.test")
	if err := copyFile(exe, bin); err != nil {
		t.Fatal(err)
	}
	old := selfCommand
	selfCommand = func() ([]string, error) { return []string{bin}, nil }
	t.Cleanup(func() { selfCommand = old })

	a := startAgent(t, func(o *Options) { o.WorkDir = shared })
	cl := sshClient(t, a.c, "nobody")
	sc, err := sftp.NewClient(cl)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	f, err := sc.Create(filepath.Join(shared, "mine"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()
	fi, err := os.Stat(filepath.Join(shared, "mine"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); uid != nobody.Uid {
		t.Errorf("file written over sftp is owned by uid %s, want nobody (%s)", uid, nobody.Uid)
	}
	// root's files stay out of reach.
	secret := filepath.Join(a.dir, "secret")
	os.WriteFile(secret, []byte("s"), 0o600)
	if _, err := sc.Open(secret); err == nil {
		t.Error("sftp as nobody read a root-only file")
	}
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

func TestSSHDirectTCPIP(t *testing.T) {
	a := startAgent(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from "+r.URL.Path)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	cl := sshClient(t, a.c, "")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return cl.DialContext(ctx, network, addr)
	}}}
	defer hc.CloseIdleConnections()
	for i := 0; i < 3; i++ {
		res, err := hc.Get("http://" + ln.Addr().String() + "/p" + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) != "hello from /p"+strconv.Itoa(i) {
			t.Fatalf("forwarded answer %q", b)
		}
	}
	// A closed port is refused with the reason, not a hang.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	_, err = cl.Dial("tcp", addr)
	var oe *ssh.OpenChannelError
	if !errors.As(err, &oe) || oe.Reason != ssh.ConnectionFailed || !strings.Contains(oe.Message, "refused") {
		t.Errorf("dial of a closed port: %v", err)
	}
}

func TestSSHRefusals(t *testing.T) {
	a := startAgent(t, nil)
	// A plain GET is not an upgrade.
	res, err := a.c.HTTPClient().Get("http://agent" + agent.SSHPath)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET /ssh: %d, want 426", res.StatusCode)
	}
	// An unknown unix user fails authentication.
	conn, err := a.c.DialUpgrade(ctxT(t, 10*time.Second), agent.SSHPath, agent.SSHProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, _, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{
		User: "no-such-user-xyz", HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	}); err == nil {
		t.Error("ssh as an unknown user was accepted")
	}
	// Unknown subsystems, channel types and remote forwarding are refused.
	cl := sshClient(t, a.c, "")
	s := newSession(t, cl)
	if err := s.RequestSubsystem("nope"); err == nil {
		t.Error("unknown subsystem accepted")
	}
	if _, _, err := cl.OpenChannel("x11", nil); err == nil {
		t.Error("x11 channel accepted")
	}
	if _, err := cl.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("remote forwarding accepted")
	}
}
