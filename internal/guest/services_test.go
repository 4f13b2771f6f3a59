package guest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/image/manifest"
)

// The test binary doubles as a tiny HTTP server for stand-in services
// (`<test binary> test-httpd PORT NAME`): /healthz answers 200, / says
// NAME. An init, not TestMain, so the SSH tests' TestMain stays theirs.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "test-httpd" {
		name := os.Args[3]
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
		err := http.ListenAndServe("127.0.0.1:"+os.Args[2], mux)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if len(os.Args) > 1 && os.Args[1] == "test-agent" {
		os.Exit(Main(append([]string{"serve"}, os.Args[2:]...)))
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func me(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// testManifest declares "code" (vscode role, autostart, HTTP health),
// "extra" (autostart, TCP health, no role) and "browser" (on demand).
func testManifest(t *testing.T, workdir string, code, extra, browser int) *manifest.Manifest {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	httpd := func(name string) []string { return []string{exe, "test-httpd", "${PORT}", name} }
	return &manifest.Manifest{
		Schema: manifest.Schema, ID: "test", User: me(t), Workdir: workdir,
		Services: []manifest.Service{
			{Name: "code", Role: manifest.RoleVSCode, Autostart: true,
				Process: agent.ProcessSpec{Argv: httpd("code"), Port: code, Restart: agent.RestartAlways},
				Health:  &manifest.Health{Path: "/healthz"}},
			{Name: "extra", Autostart: true,
				Process: agent.ProcessSpec{Argv: httpd("extra"), Port: extra, Restart: agent.RestartOnFailure},
				Health:  &manifest.Health{}},
			{Name: "browser", Role: manifest.RoleBrowser,
				Process: agent.ProcessSpec{Shell: "exec " + exe + ` test-httpd "$PORT" browser`, Port: browser, Restart: agent.RestartOnFailure},
				Health:  &manifest.Health{Path: "/"}},
		},
	}
}

// imageAgent starts an agent whose image manifest is m and whose state
// lives in dir/state, like a guest's /var/lib/atelier.
func imageAgent(t *testing.T, dir string, m *manifest.Manifest) *testAgent {
	t.Helper()
	mpath := filepath.Join(dir, "image.json")
	if m != nil {
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mpath, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return startAgent(t, func(o *Options) {
		o.ManifestPath = mpath
		o.StateDir = filepath.Join(dir, "state")
		o.LogDir = filepath.Join(dir, "logs")
	})
}

func services(t *testing.T, a *testAgent) map[string]agent.ProcessStatus {
	t.Helper()
	list, err := a.c.Services(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]agent.ProcessStatus{}
	for _, p := range list {
		out[p.Name] = p
	}
	return out
}

func readyUntil(t *testing.T, a *testAgent, name string) agent.ProcessStatus {
	t.Helper()
	var st agent.ProcessStatus
	eventually(t, 15*time.Second, name+" to be ready", func() bool {
		st = services(t, a)[name]
		return st.Ready
	})
	return st
}

func get(t *testing.T, port int, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	res, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + path)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestImageServicesAutostartAndDesiredState(t *testing.T) {
	dir := t.TempDir()
	code, extra, browser := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	m := testManifest(t, dir, code, extra, browser)
	a := imageAgent(t, dir, m)
	ctx := ctxT(t, time.Minute)

	st := readyUntil(t, a, "code")
	if st.Role != manifest.RoleVSCode || !st.Image || !st.Wanted || st.Port != code || st.User != me(t) || st.Cwd != dir || st.Restart != agent.RestartAlways {
		t.Fatalf("code service %+v", st)
	}
	if st.Argv[2] != strconv.Itoa(code) {
		t.Fatalf("${PORT} not expanded: %q", st.Argv)
	}
	if _, body := get(t, code, "/"); body != "code" {
		t.Fatalf("code answers %q", body)
	}
	// A Go HTTP server holds a few MiB resident.
	if st.RSSBytes < 1<<20 || st.RSSBytes > 1<<30 {
		t.Fatalf("code's resident memory: %d bytes", st.RSSBytes)
	}
	readyUntil(t, a, "extra")
	if b := services(t, a)["browser"]; b.State != agent.StateStopped || b.Wanted || b.Ready || b.Role != manifest.RoleBrowser {
		t.Fatalf("on-demand browser at boot: %+v", b)
	}

	// The restart policy is the manifest's: a killed service comes back.
	if err := syscall.Kill(-st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "code restarted", func() bool {
		s := services(t, a)["code"]
		return s.Restarts == 1 && s.Ready && s.PID != st.PID
	})

	// An image service takes no spec: the manifest is its spec.
	_, err := a.c.StartService(ctx, "browser", agent.ProcessSpec{Argv: []string{"/bin/sh"}})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "body")
	if _, err := a.c.StartImageService(ctx, "browser"); err != nil {
		t.Fatal(err)
	}
	if b := readyUntil(t, a, "browser"); !b.Wanted {
		t.Fatalf("started browser not wanted: %+v", b)
	}
	if _, body := get(t, browser, "/"); body != "browser" {
		t.Fatalf("browser answers %q", body)
	}
	// Stopping is remembered too.
	if st, err := a.c.StopService(ctx, "extra", 0); err != nil || st.Wanted || st.State != agent.StateStopped {
		t.Fatalf("stop extra: %+v %v", st, err)
	}
	// A service started through the API with its own spec is remembered.
	if _, err := a.c.StartService(ctx, "mine", agent.ProcessSpec{Argv: []string{"sleep", "300"}}); err != nil {
		t.Fatal(err)
	}

	// An agent restart (the same disk) comes back to the same set.
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	b := imageAgent(t, dir, m)
	got := services(t, b)
	if !got["code"].Running || !got["browser"].Running || got["browser"].Restarts != 0 || !got["mine"].Running {
		t.Fatalf("after agent restart: %+v", got)
	}
	if got["extra"].Running || got["extra"].Wanted {
		t.Fatalf("a stopped service came back: %+v", got["extra"])
	}
	if got["mine"].Image || !got["mine"].Wanted || got["mine"].Argv[0] != "sleep" {
		t.Fatalf("API service after restart: %+v", got["mine"])
	}
	readyUntil(t, b, "browser")
	if _, body := get(t, browser, "/"); body != "browser" {
		t.Fatalf("browser after agent restart answers %q", body)
	}
}

func TestApplyPortsRestartsRoleServices(t *testing.T) {
	dir := t.TempDir()
	code, extra, browser := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	m := testManifest(t, dir, code, extra, browser)
	a := imageAgent(t, dir, m)
	ctx := ctxT(t, time.Minute)
	first := readyUntil(t, a, "code")
	readyUntil(t, a, "extra")
	extraPID := services(t, a)["extra"].PID

	// The same ports: nothing restarts.
	list, err := a.c.ApplyServices(ctx, agent.ServicesApply{Ports: map[string]int{"vscode": code}})
	if err != nil || len(list) != 3 {
		t.Fatalf("apply: %+v %v", list, err)
	}
	if s := services(t, a)["code"]; s.PID != first.PID {
		t.Fatalf("an unchanged apply restarted code: %d -> %d", first.PID, s.PID)
	}

	moved := freeTCPPort(t)
	if _, err := a.c.ApplyServices(ctx, agent.ServicesApply{Ports: map[string]int{"vscode": moved, "browser": browser}}); err != nil {
		t.Fatal(err)
	}
	st := readyUntil(t, a, "code")
	if st.Port != moved || st.PID == first.PID {
		t.Fatalf("code after a port change: %+v", st)
	}
	if _, body := get(t, moved, "/"); body != "code" {
		t.Fatalf("new port answers %q", body)
	}
	if code, _ := get(t, code, "/"); code != 0 {
		t.Fatalf("old port still answers %d", code)
	}
	if s := services(t, a)["extra"]; s.PID != extraPID {
		t.Fatal("a service without a role was restarted by a port change")
	}
	if s := services(t, a)["browser"]; s.Running {
		t.Fatal("apply started an unwanted service")
	}

	_, err = a.c.ApplyServices(ctx, agent.ServicesApply{Ports: map[string]int{"db": 5432}})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "ports")
	_, err = a.c.ApplyServices(ctx, agent.ServicesApply{Ports: map[string]int{"vscode": 70000}})
	wantAgentError(t, err, 400, agent.CodeBadRequest, "ports")

	// The port is part of the desired state.
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	b := imageAgent(t, dir, m)
	if st := readyUntil(t, b, "code"); st.Port != moved {
		t.Fatalf("port after agent restart: %d, want %d", st.Port, moved)
	}
}

func TestImageWithoutOrWithBadManifest(t *testing.T) {
	dir := t.TempDir()
	a := imageAgent(t, dir, nil)
	if list := services(t, a); len(list) != 0 {
		t.Fatalf("services without a manifest: %+v", list)
	}
	_, err := a.c.ApplyServices(ctx(t), agent.ServicesApply{Ports: map[string]int{"vscode": 8080}})
	if err != nil {
		t.Fatalf("apply without a manifest: %v", err)
	}
	req, _ := http.NewRequest("GET", "http://agent/image", nil)
	res, err := a.c.HTTPClient().Do(req)
	if err != nil || res.StatusCode != 404 {
		t.Fatalf("GET /image without a manifest: %v %v", res, err)
	}
	res.Body.Close()

	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "image.json"), []byte(`{"schema":1,"id":"x","user":"dev","workdir":"/w","servces":[]}`), 0o644)
	b := startAgent(t, func(o *Options) { o.ManifestPath = filepath.Join(bad, "image.json") })
	res, err = b.c.HTTPClient().Do(req)
	if err != nil || res.StatusCode != 422 {
		t.Fatalf("GET /image with a bad manifest: %v %v", res, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), "servces") {
		t.Fatalf("bad manifest error %s", body)
	}
}

func ctx(t *testing.T) context.Context { return ctxT(t, 30*time.Second) }

// TestAgentKilledLeavesNothingRunning: an agent killed with SIGKILL leaves
// its services' process groups to init; the next agent ends them before it
// starts the services again on the same ports.
func TestAgentKilledLeavesNothingRunning(t *testing.T) {
	dir := t.TempDir()
	port := freeTCPPort(t)
	exe, _ := os.Executable()
	// The leader is a shell; its child holds the port and would survive
	// the leader's death (Pdeathsig only reaches direct children).
	m := &manifest.Manifest{Schema: manifest.Schema, ID: "test", User: me(t), Workdir: dir,
		Services: []manifest.Service{{Name: "code", Role: manifest.RoleVSCode, Autostart: true,
			Process: agent.ProcessSpec{Shell: exe + ` test-httpd "$PORT" code & wait`, Port: port, Restart: agent.RestartAlways},
			Health:  &manifest.Health{Path: "/healthz"}}}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "image.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "a.sock")
	run := func() *exec.Cmd {
		cmd := exec.Command(exe, "test-agent", "--unix", sock, "--vsock-port", "0", "--workdir", dir,
			"--log-dir", filepath.Join(dir, "logs"), "--config-path", filepath.Join(dir, "config.json"),
			"--etc-dir", dir, "--image-manifest", filepath.Join(dir, "image.json"), "--state-dir", filepath.Join(dir, "state"))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
		return cmd
	}
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	first := run()
	if err := c.WaitReady(ctx(t), 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var old agent.ProcessStatus
	eventually(t, 15*time.Second, "code ready", func() bool {
		st, err := c.Service(context.Background(), "code")
		if err == nil {
			old = *st
		}
		return err == nil && st.Ready
	})
	holder := portHolder(t, port)
	first.Process.Kill()
	first.Wait()
	c.Close()
	// The port is still held by the orphan.
	if code, _ := get(t, port, "/"); code != 200 {
		t.Fatalf("orphan does not answer (%d): the test proves nothing", code)
	}

	run()
	c2 := agent.New(agent.UnixDialer(sock))
	defer c2.Close()
	if err := c2.WaitReady(ctx(t), 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "code ready again", func() bool {
		st, err := c2.Service(context.Background(), "code")
		return err == nil && st.Ready && st.PID != old.PID
	})
	eventually(t, 5*time.Second, "the orphan gone", func() bool { return processGone(holder) })
	st, _ := c2.Service(context.Background(), "code")
	if st.Restarts != 0 || st.State != agent.StateRunning {
		t.Fatalf("code after the agent's restart: %+v (the orphan kept the port?)", st)
	}
}

// portHolder finds the pid listening on port (from /proc/net/tcp inodes).
func portHolder(t *testing.T, port int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hexPort := fmt.Sprintf(":%04X", port)
	inode := ""
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[1], hexPort) && f[3] == "0A" {
			inode = f[9]
		}
	}
	if inode == "" {
		t.Fatalf("nothing listens on %d", port)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range procs {
		if l, err := os.Readlink(fd); err == nil && l == "socket:["+inode+"]" {
			pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
			return pid
		}
	}
	t.Fatalf("no process holds port %d", port)
	return 0
}

// The image's user starts in the image's workdir (SSH sessions and
// terminals give no cwd); another user keeps its home.
func TestImageUserStartsInWorkdir(t *testing.T) {
	dir := t.TempDir()
	workdir := filepath.Join(dir, "workspace")
	if err := os.Mkdir(workdir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: manifest.Schema, ID: "test", User: me(t), Workdir: workdir}
	write := func(dir string, m *manifest.Manifest) string {
		b, _ := m.Marshal()
		p := filepath.Join(dir, "image.json")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// No --workdir: the agent as the images start it.
	mp := write(dir, m)
	a := startAgent(t, func(o *Options) { o.ManifestPath, o.StateDir, o.WorkDir = mp, filepath.Join(dir, "state"), "" })
	res, err := a.c.Exec(ctxT(t, 10*time.Second), agent.ExecRequest{Shell: "pwd"})
	if err != nil || strings.TrimSpace(res.Stdout) != workdir {
		t.Fatalf("pwd of the image's user: %+v %v, want %s", res, err, workdir)
	}
	other := &manifest.Manifest{Schema: manifest.Schema, ID: "test", User: "nobody-else", Workdir: workdir}
	dir2 := t.TempDir()
	mp2 := write(dir2, other)
	b := startAgent(t, func(o *Options) { o.ManifestPath, o.StateDir, o.WorkDir = mp2, filepath.Join(dir2, "state"), "" })
	res, err = b.c.Exec(ctxT(t, 10*time.Second), agent.ExecRequest{Shell: "pwd"})
	if err != nil || strings.TrimSpace(res.Stdout) == workdir {
		t.Fatalf("pwd of a user that is not the image's: %+v %v", res, err)
	}
}
