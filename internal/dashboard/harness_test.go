package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"atelier/internal/browsertest"
	"atelier/internal/dashboard"
	"atelier/internal/testenv"
)

// requireApp skips (fails under CI) when the binary was built without the
// web app: these tests are about the built dashboard.
func requireApp(tb testing.TB) {
	tb.Helper()
	if !dashboard.New(dashboard.Options{}).Built() {
		testenv.Missing(tb, "the dashboard is not built into this test binary: run make web first")
	}
}

// axePath is axe-core from the web app's own dependencies (npm ci in web/).
func axePath(tb testing.TB) string {
	tb.Helper()
	p, _ := filepath.Abs("../../web/node_modules/axe-core/axe.min.js")
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(tb, "requires axe-core in web/node_modules (make web)")
	}
	return p
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// atelierBinary builds cmd/atelier once per test binary: the real `atelier
// serve` these tests drive, with the web app embedded.
func atelierBinary(tb testing.TB) string {
	tb.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "atelier-dash")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "atelier")
		cmd := exec.Command("go", "build", "-o", binPath, "../../cmd/atelier")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build atelier: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		tb.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func freePort(tb testing.TB) int { return testenv.FreePort(tb) }

// mockManager is `atelier serve` in mock mode, as `make run` starts it:
// sandboxes are the real agent as local processes, the edge serves their
// hosts on http://<host>.localhost:<EdgePort>.
type mockManager struct {
	URL      string
	Port     int
	EdgePort int
	cmd      *exec.Cmd
	log      *bytes.Buffer
}

func startMock(tb testing.TB, env ...string) *mockManager {
	tb.Helper()
	browsertest.Require(tb)
	requireApp(tb)
	bin := atelierBinary(tb)
	dir, err := os.MkdirTemp("", "atld")
	if err != nil {
		tb.Fatal(err)
	}
	m := &mockManager{Port: freePort(tb), EdgePort: freePort(tb), log: &bytes.Buffer{}}
	m.URL = "http://localhost:" + strconv.Itoa(m.Port)
	m.cmd = exec.Command(bin, "serve")
	m.cmd.Env = append(os.Environ(),
		"ATELIER_SERVER_MODE=mock",
		"ATELIER_DATA_DIR="+filepath.Join(dir, "data"),
		"ATELIER_STATE_DIR="+filepath.Join(dir, "state"),
		"ATELIER_LOG_DIR="+filepath.Join(dir, "log"),
		"ATELIER_SERVER_PORT="+strconv.Itoa(m.Port),
		"ATELIER_HTTP_PORT="+strconv.Itoa(m.EdgePort),
		"ATELIER_HTTPS_PORT="+strconv.Itoa(freePort(tb)),
		"ATELIER_SSH_PROXY_PORT="+strconv.Itoa(freePort(tb)),
	)
	m.cmd.Env = append(m.cmd.Env, env...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Sandboxes outlive a manager's stop: delete them first, so no agent
		// process is left behind.
		var list struct {
			Sandboxes []struct{ ID string } `json:"sandboxes"`
		}
		if err := m.api("GET", "/api/sandboxes", nil, &list); err == nil {
			for _, sb := range list.Sandboxes {
				_ = m.api("DELETE", "/api/sandboxes/"+sb.ID, nil, nil)
			}
		}
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = m.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		os.RemoveAll(dir)
		if tb.Failed() {
			tb.Logf("manager log:\n%s", m.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(m.URL + "/health/ready")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("manager not ready: %v\n%s", err, m.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m
}

// api calls the manager as a script would (no browser headers).
func (m *mockManager) api(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, m.URL+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 30 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// allowedMock are the origins a mock-mode dashboard may reach: itself and
// the sandbox hosts its edge serves. Anything else fails the test.
func (m *mockManager) allowed() []string {
	return []string{
		"^" + regexpQuote(m.URL) + "(/|$)",
		"^ws://localhost:" + strconv.Itoa(m.Port) + "/",
		`^http://[a-z0-9-]+\.localhost:` + strconv.Itoa(m.EdgePort) + "(/|$)",
	}
}

func regexpQuote(s string) string {
	r := strings.NewReplacer(".", `\.`, "/", `\/`, ":", `\:`)
	return r.Replace(s)
}

// prelude runs before every script: it records any request (page, fetch,
// WebSocket, popup) to an origin not in args.allowed, every uncaught page
// error and every Content-Security-Policy violation, and gives the scripts
// check() (throws if anything was recorded) and axe(page, where) (throws on
// serious or critical accessibility violations).
const prelude = `
const fs = require('fs');
const allowedRes = (args.allowed || []).map((r) => new RegExp(r));
const isAllowed = (u) => u.startsWith('data:') || u.startsWith('blob:') || u === 'about:blank' || allowedRes.some((r) => r.test(u));
const problems = [];
const watchPage = (p) => {
  p.on('websocket', (ws) => { if (!isAllowed(ws.url())) problems.push('websocket to another origin: ' + ws.url()); });
  p.on('console', (m) => { if (/Content.Security.Policy|Refused to (load|execute|connect|frame|apply)/i.test(m.text())) problems.push('CSP: ' + m.text()); });
  p.on('pageerror', (e) => problems.push('page error: ' + e.message));
};
context.on('request', (r) => { if (!isAllowed(r.url())) problems.push('request to another origin: ' + r.url()); });
context.on('page', watchPage);
watchPage(page);
const check = () => { if (problems.length) throw new Error(problems.join('\n')); };
const axeSource = args.axe ? fs.readFileSync(args.axe, 'utf8') : '';
const axe = async (p, where) => {
  await p.evaluate(axeSource);
  const r = await p.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    throw new Error('accessibility on ' + where + ': ' + bad.map((v) => v.id + ' [' + v.impact + '] ' + v.help + ' at ' +
      v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ')).join('\n'));
  }
  return r.violations.length;
};
`

// run executes a browser script with the prelude and the given args merged
// with {allowed, axe}.
func run(tb testing.TB, opts browsertest.Options, out any) {
	tb.Helper()
	opts.Script = prelude + opts.Script
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	if err := browsertest.Run(tb, context.Background(), opts, out); err != nil {
		tb.Fatal(err)
	}
}
