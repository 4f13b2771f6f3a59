package sshproxy

import (
	"atelier/internal/logkeeper"
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/agent"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/events"
	"atelier/internal/metrics"
	netmock "atelier/internal/network/mock"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
)

var agentBin string

// TestMain builds the real agent once: mock-mode sandboxes run it as a
// local process, so the proxy talks to the same SSH server as in a VM.
func TestMain(m *testing.M) {
	logkeeper.MainIfKeeper()
	if os.Getenv(benchClientEnv) != "" {
		os.Exit(benchClientMain())
	}
	dir, err := os.MkdirTemp("", "atlsshp")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "atelier-agent")
	cmd := exec.Command("go", "build", "-o", agentBin, "../../cmd/atelier-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a mock-mode manager in miniature: store, lifecycle service with
// real agent processes, and the proxy on a loopback port.
type env struct {
	cfg   *config.Config
	st    *store.Store
	sbx   *sandbox.Service
	proxy *Proxy
	rt    *process.Runtime
	addr  string
	now   func() time.Time
}

func newEnv(t testing.TB, tweak func(*config.Config)) *env {
	t.Helper()
	return newEnvWith(t, tweak, nil)
}

// newEnvWith is newEnv with the proxy's options adjusted by popts.
func newEnvWith(t testing.TB, tweak func(*config.Config), popts func(*Options)) *env {
	t.Helper()
	// Short paths: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "atlssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.Default()
	cfg.Server.Mode = config.ModeMock
	cfg.Server.DataDir = filepath.Join(dir, "data")
	cfg.Sandbox.StateDir = filepath.Join(dir, "s")
	cfg.Auth.AllowedUsers = []string{"octocat", "mallory"}
	if tweak != nil {
		tweak(cfg)
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("SSHPROXY_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st, err := store.Open(context.Background(), cfg.Server.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := process.New(process.Options{Command: []string{agentBin}, StateDir: filepath.Join(dir, "s", "mock"),
		SocketDir: filepath.Join(dir, "k"), StopGrace: 2 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	sbx := sandbox.New(cfg, st, events.New(st, log), metrics.New(),
		sandbox.Drivers{Runtime: rt, Network: netmock.New(), Volumes: stmock.New(filepath.Join(dir, "s", "overlays"))}, log)
	e := &env{cfg: cfg, st: st, sbx: sbx, rt: rt, now: time.Now}
	po := Options{Config: cfg, Store: st, Sandboxes: sbx, Log: log, Now: func() time.Time { return e.now() }}
	if popts != nil {
		popts(&po)
	}
	e.proxy, err = New(po)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	cfg.Domain.SSH.Port = ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	runDone, serveDone := make(chan struct{}), make(chan error, 1)
	go func() { defer close(runDone); sbx.Run(ctx) }()
	go func() { serveDone <- e.proxy.Serve(ctx, ln) }()
	t.Cleanup(func() {
		// Sandboxes first: their agents are processes of ours.
		list, _ := st.ListSandboxes(context.Background(), store.SandboxFilter{})
		for _, sb := range list {
			if err := sbx.Destroy(context.Background(), sb.ID); err != nil {
				t.Errorf("destroy %s: %v", sb.ID, err)
			}
		}
		cancel()
		<-runDone
		if err := <-serveDone; err != nil {
			t.Errorf("serve: %v", err)
		}
		st.Close()
	})
	return e
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// user records a user; gh 0 is mock mode's local user.
func (e *env) user(t testing.TB, login string, gh int64) store.User {
	t.Helper()
	var u store.User
	var err error
	if gh == 0 {
		u, err = e.st.EnsureUser(context.Background(), store.User{ID: login, Login: login})
	} else {
		u, err = e.st.UpsertGitHubUser(context.Background(), store.User{GitHubID: gh, Login: login})
	}
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// key makes a client key and, when userID is not "", registers it.
func (e *env) key(t testing.TB, userID string, expires *time.Time) (ssh.Signer, store.SSHKey) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if userID == "" {
		return signer, store.SSHKey{}
	}
	return signer, e.register(t, userID, signer, expires)
}

// register adds signer's public key to userID's keys.
func (e *env) register(t testing.TB, userID string, signer ssh.Signer, expires *time.Time) store.SSHKey {
	t.Helper()
	k, err := e.st.CreateSSHKey(context.Background(), store.SSHKey{UserID: userID, Name: "k",
		PublicKey:   strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		Fingerprint: ssh.FingerprintSHA256(signer.PublicKey()), Type: signer.PublicKey().Type(), ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sandbox creates a sandbox owned by owner and waits until it runs.
func (e *env) sandbox(t testing.TB, owner string) string {
	t.Helper()
	sb, err := e.sbx.Create(ctxT(t, 30*time.Second), sandbox.CreateRequest{OwnerID: owner})
	if err != nil {
		t.Fatal(err)
	}
	sb, err = e.sbx.Wait(ctxT(t, 30*time.Second), sb.ID)
	if err != nil || sb.Status != store.StatusRunning {
		t.Fatalf("sandbox %s: %v %s %s", sb.ID, err, sb.Status, sb.Error)
	}
	return sb.ID
}

// dial connects through the proxy; banner collects what the proxy said
// before authentication ended.
func (e *env) dial(user string, signer ssh.Signer, banner *strings.Builder) (*ssh.Client, error) {
	cfg := &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(e.proxy.HostKey()),
		Timeout:         10 * time.Second,
		BannerCallback: func(msg string) error {
			if banner != nil {
				banner.WriteString(msg)
			}
			return nil
		},
	}
	return ssh.Dial("tcp", e.addr, cfg)
}

// dialDirect reaches the agent's SSH server without the proxy, as a
// yardstick.
func (e *env) dialDirect(t testing.TB, id string) *ssh.Client {
	t.Helper()
	cl, err := e.sbx.Agent(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := cl.DialUpgrade(ctxT(t, 10*time.Second), agent.SSHPath, agent.SSHProtocol)
	if err != nil {
		t.Fatal(err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "agent", &ssh.ClientConfig{HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	return ssh.NewClient(sc, chans, reqs)
}

// run executes cmd on a new session and returns stdout, stderr and the
// exit status (-1 when the session ended without one).
func run(t testing.TB, cl *ssh.Client, cmd string, stdin io.Reader) (string, string, int) {
	t.Helper()
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, errs strings.Builder
	s.Stdout, s.Stderr, s.Stdin = &out, &errs, stdin
	err = s.Run(cmd)
	code := 0
	if err != nil {
		ee, ok := err.(*ssh.ExitError)
		if !ok {
			return out.String(), errs.String(), -1
		}
		code = ee.ExitStatus()
	}
	return out.String(), errs.String(), code
}

// agentPID finds the mock-mode agent process serving sandbox id.
func agentPID(t testing.TB, id string) int {
	t.Helper()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if args := strings.Split(string(b), "\x00"); args[0] == agentBin && strings.Contains(string(b), id) {
			return pid
		}
	}
	t.Fatalf("no agent process for sandbox %s", id)
	return 0
}

// loggedIn makes the local user, a running sandbox of theirs and a key,
// and connects through the proxy; the connection closes with the test.
func (e *env) loggedIn(t testing.TB) (string, ssh.Signer, *ssh.Client) {
	t.Helper()
	local := e.user(t, auth.LocalUserID, 0)
	id := e.sandbox(t, local.ID)
	signer, _ := e.key(t, local.ID, nil)
	cl, err := e.dial(id, signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return id, signer, cl
}

// startSleeper runs a program on s that reads nothing and lives for
// minutes, and returns its pid.
func startSleeper(t testing.TB, s *ssh.Session) int {
	t.Helper()
	out, err := s.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("echo $$; exec sleep 300"); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("pid %q", line)
	}
	return pid
}
