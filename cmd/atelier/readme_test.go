package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/testenv"
)

// The README's shell blocks are run by TestREADME, so the README cannot
// rot. Each fenced block is preceded by a marker line:
//
//	<!-- test: mock -->             run it against a mock manager started with `make run`
//	<!-- test: skip: REASON -->     not run (production hosts, make targets); the reason is required
//
// A block without a marker fails the test, so a new block is a decision.
const (
	markMock = "<!-- test: mock -->"
	markSkip = "<!-- test: skip:"
)

type readmeBlock struct {
	line   int // of the opening fence
	mark   string
	script string
}

// readmeBlocks returns every fenced block of a shell-like language (sh,
// bash, shell, console, or none) with the marker line above it.
func readmeBlocks(text string) ([]readmeBlock, error) {
	var out []readmeBlock
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(l, "```") {
			continue
		}
		lang := strings.TrimPrefix(l, "```")
		start := i
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, lines[i])
		}
		if i == len(lines) {
			return nil, fmt.Errorf("README.md:%d: unclosed fence", start+1)
		}
		switch lang {
		case "", "sh", "bash", "shell", "console":
		default:
			continue // not commands (json, text, go…)
		}
		b := readmeBlock{line: start + 1, script: strings.Join(body, "\n")}
		if start > 0 {
			b.mark = strings.TrimSpace(lines[start-1])
		}
		out = append(out, b)
	}
	return out, nil
}

func TestREADMEBlocksParse(t *testing.T) {
	blocks, err := readmeBlocks("x\n<!-- test: mock -->\n```sh\necho a\n```\n```json\n{}\n```\n```sh\nls\n```\n")
	if err != nil || len(blocks) != 2 || blocks[0].mark != markMock || blocks[0].script != "echo a" || blocks[1].mark != "```" {
		t.Fatalf("%+v %v", blocks, err)
	}
}

// TestREADME starts `make run` (with a binary this test builds, temporary
// state and free ports), then runs every block the README marks for it in
// order, the way a reader would in a second terminal, and fails on the
// first command that fails. It also checks the README's shape: `make run`
// and `make test` first, every shell block marked.
func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the atelier binary and runs make run")
	}
	for _, tool := range []string{"make", "bash", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s (the README's commands use it)", tool)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := readmeBlocks(string(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 || !strings.HasPrefix(blocks[0].script, "make run ") || !strings.Contains(blocks[0].script, "\nmake test ") {
		t.Fatalf("the README's first block must be make run, then make test:\n%s", blocks[0].script)
	}
	var run []readmeBlock
	for _, b := range blocks {
		switch {
		case b.mark == markMock:
			run = append(run, b)
		case strings.HasPrefix(b.mark, markSkip) && strings.HasSuffix(b.mark, "-->") && len(strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(b.mark, markSkip), "-->"))) > 3:
		default:
			t.Errorf("README.md:%d: a shell block without a marker: put %q or %q above it", b.line, markMock, markSkip+" REASON -->")
		}
	}
	if t.Failed() {
		return
	}

	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin", "atelier")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X atelier/internal/server.Version=readme-test", "./cmd/atelier")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}

	port, edge, sshPort := freePort(t), freePort(t), freePort(t)
	state := filepath.Join(tmp, "data", "state")
	var log syncBuf
	mk := exec.Command("make", "-s", "-o", "build", "run", "ATELIER_BIN="+bin, "DATA_DIR="+filepath.Join(tmp, "data"),
		"PORT="+strconv.Itoa(port), "EDGE_PORT="+strconv.Itoa(edge), "SSH_PORT="+strconv.Itoa(sshPort))
	mk.Dir = repo
	mk.Stdout, mk.Stderr = &log, &log
	mk.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The developer's own ATELIER_* variables must not leak into make run.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ATELIER_") {
			mk.Env = append(mk.Env, kv)
		}
	}
	if err := mk.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- mk.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = syscall.Kill(-mk.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-mk.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	t.Cleanup(func() {
		stop()
		// Mock sandboxes outlive the manager: stop what is left.
		c := exec.Command(bin, "mock-stop")
		c.Env = append(os.Environ(), "ATELIER_STATE_DIR="+state)
		_ = c.Run()
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	waitHTTP(t, base+"/health/ready", exited, &log)
	if want := "url=http://localhost:" + strconv.Itoa(port) + "/"; !strings.Contains(log.String(), want) {
		t.Errorf("make run's log does not say where to open it (%s):\n%s", want, log.String())
	}
	// One format, and no warning about choices made on purpose (Caddy's
	// start-up lines used to arrive as JSON on stderr, with a warning that
	// its admin API is off).
	for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		if !strings.HasPrefix(l, "time=") || strings.Contains(l, "admin endpoint disabled") || strings.Contains(l, "level=WARN") {
			t.Errorf("make run logged %q", l)
		}
	}

	// A reader's second terminal: the repository's directory, with ./bin/atelier.
	work := filepath.Join(tmp, "work")
	home := filepath.Join(tmp, "home")
	for _, d := range []string{filepath.Join(work, "bin"), filepath.Join(home, ".ssh")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(bin, filepath.Join(work, "bin", "atelier")); err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sk, _ := ssh.NewPublicKey(pub)
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519.pub"), append(bytes.TrimSpace(ssh.MarshalAuthorizedKey(sk)), []byte(" reader@laptop\n")...), 0o644)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C.UTF-8", "ATELIER_URL=" + base}
	// The README speaks of make run's default ports; this manager has its own.
	ports := strings.NewReplacer("localhost:4000", "localhost:"+strconv.Itoa(port), "localhost:4080", "localhost:"+strconv.Itoa(edge))
	for _, b := range run {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		c := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", ports.Replace(b.script))
		c.Dir, c.Env = work, env
		// A process a block leaves behind must not hold its output open.
		c.WaitDelay = 5 * time.Second
		t.Logf("README.md:%d running", b.line)
		out, err := c.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("README.md:%d: the block failed: %v\n--- block\n%s\n--- output\n%s\n--- make run's log\n%s", b.line, err, b.script, out, log.String())
		}
		t.Logf("README.md:%d ok:\n%s", b.line, out)
	}

	// One build, one version: the agent of a mock sandbox reports the manager's.
	id := strings.TrimSpace(runOut(t, work, env, "./bin/atelier", "sandbox", "create", "--name", "versions", "-q"))
	var mh, ah struct{ Version string }
	getJSON(t, base+"/health", &mh)
	getJSON(t, base+"/api/sandboxes/"+id+"/health", &ah)
	if mh.Version != "readme-test" || ah.Version != mh.Version {
		t.Errorf("manager version %q, its mock agent's %q: want both readme-test", mh.Version, ah.Version)
	}

	// Stopping make run leaves the sandbox running and says so; mock-stop
	// (make clean) ends it.
	stop()
	if !strings.Contains(log.String(), "mock sandboxes keep running") {
		t.Errorf("stopping make run did not say the mock sandboxes keep running:\n%s", log.String())
	}
	if len(agentPIDs(t, id)) != 1 {
		t.Fatalf("the mock sandbox did not outlive the manager")
	}
	c := exec.Command(bin, "mock-stop")
	c.Env = append(env, "ATELIER_STATE_DIR="+state)
	if out, err := c.CombinedOutput(); err != nil || !strings.Contains(string(out), "stopped 1 mock sandboxes") {
		t.Fatalf("mock-stop: %v %s", err, out)
	}
	if pids := agentPIDs(t, id); len(pids) != 0 {
		t.Fatalf("mock-stop left the agent running: %v", pids)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitHTTP(t *testing.T, url string, exited chan error, log *syncBuf) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("make run exited: %v\n%s", err, log.String())
		default:
		}
		if res, err := http.Get(url); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never answered 200:\n%s", url, log.String())
}

func runOut(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	c := exec.Command(name, args...)
	c.Dir, c.Env = dir, env
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(out)
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if err := json.NewDecoder(bufio.NewReader(res.Body)).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}
