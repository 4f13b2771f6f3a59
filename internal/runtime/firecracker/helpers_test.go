package firecracker

import (
	"atelier/internal/logkeeper"
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/runtime/firecracker/fctest"
	"atelier/internal/sandbox"
	"atelier/internal/vmtest"
)

// TestMain doubles as the fake firecracker: the driver under test starts
// this test binary with fctest.EnvFake set.
func TestMain(m *testing.M) {
	fctest.MainIfFake()
	logkeeper.MainIfKeeper()
	code := m.Run()
	vmtest.Cleanup()
	if fcfake.dir != "" {
		os.RemoveAll(fcfake.dir)
	}
	os.Exit(code)
}

const specPath = "testdata/firecracker-api-v1.14.1.yaml"

type env struct {
	t      *testing.T
	root   string
	d      *Driver
	opts   Options
	recDir string
	disk   string
	spec   *fctest.Spec
}

// newEnv returns a driver whose firecracker is the fake, with every path
// under one temporary directory. extra is added to the fake's environment.
// At cleanup it fails the test if any process started under the directory
// is still alive, and kills it.
func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	root := t.TempDir()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := fctest.LoadSpec(specPath)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, root: root, recDir: filepath.Join(root, "rec"), disk: filepath.Join(root, "disk.ext4"), spec: spec}
	if err := os.MkdirAll(e.recDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{e.disk, filepath.Join(root, "vmlinux")} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.opts = Options{
		Binary:      bin,
		Kernel:      filepath.Join(root, "vmlinux"),
		SocketDir:   filepath.Join(root, "s"),
		LogDir:      filepath.Join(root, "l"),
		SnapshotDir: filepath.Join(root, "n"),
		Log:         slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	e.d = e.newDriver(extra...)
	t.Cleanup(func() { checkNoProcesses(t, root) })
	return e
}

// newDriver is a second driver on the same directories, as after a
// manager restart.
func (e *env) newDriver(extra ...string) *Driver {
	e.t.Helper()
	d, err := New(e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	specAbs, _ := filepath.Abs(specPath)
	d.env = append([]string{
		fctest.EnvFake + "=1",
		fctest.EnvSpec + "=" + specAbs,
		fctest.EnvRecordDir + "=" + e.recDir,
	}, extra...)
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (e *env) inst(id string) sandbox.Instance {
	return sandbox.Instance{
		ID: id, Vcpus: 2, MemoryMB: 512,
		IP: "172.16.0.10", MAC: "06:00:AC:10:00:0A", Gateway: "172.16.0.1", PrefixLen: 24,
		DNS:  []string{"8.8.8.8", "8.8.4.4"},
		Disk: e.disk, Link: "tap-" + id[:8],
	}
}

// records returns the requests the fake(s) for id answered.
func (e *env) records(id string) []fctest.Record {
	e.t.Helper()
	recs, err := fctest.ReadRecords(e.recDir, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return recs
}

// calls is the "METHOD /path" list of records.
func calls(recs []fctest.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Method + " " + r.Path
	}
	return out
}

// body decodes the body of the first record for method and path.
func body(t *testing.T, recs []fctest.Record, method, path string) map[string]any {
	t.Helper()
	for _, r := range recs {
		if r.Method == method && r.Path == path {
			var m map[string]any
			if err := json.Unmarshal(r.Body, &m); err != nil {
				t.Fatalf("%s %s body: %v", method, path, err)
			}
			return m
		}
	}
	t.Fatalf("no %s %s request", method, path)
	return nil
}

// checkSpec re-validates every recorded request against the spec, with
// unknown properties rejected, independently of what the fake answered,
// and requires that the fake accepted each one.
func (e *env) checkSpec(recs []fctest.Record) {
	e.t.Helper()
	for _, r := range recs {
		if !r.OK() {
			e.t.Errorf("%s %s rejected: %d %s", r.Method, r.Path, r.Status, r.Fault)
		}
		op, _, ok := e.spec.Match(r.Method, r.Path)
		if !ok {
			e.t.Errorf("%s %s is not in the spec", r.Method, r.Path)
			continue
		}
		if op.Body == nil || len(r.Body) == 0 {
			if op.BodyRequired {
				e.t.Errorf("%s %s sent without its required body", r.Method, r.Path)
			}
			continue
		}
		if err := e.spec.ValidateJSON(op.Body, r.Body, fctest.Options{DenyUnknown: true}); err != nil {
			e.t.Errorf("%s %s body breaks the spec: %v", r.Method, r.Path, err)
		}
	}
}

func (e *env) pid(id string) int {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.opts.SocketDir, id+".pid"))
	if err != nil {
		e.t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		e.t.Fatal(err)
	}
	return pid
}

// files lists the entries of a directory (none when it does not exist).
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		out = append(out, en.Name())
	}
	return out
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func isSocket(path string) bool {
	st, err := os.Lstat(path)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

// processAlive is true for a live, non-zombie process.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// sessionID reads field 6 of /proc/<pid>/stat.
func sessionID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	sid, err := strconv.Atoi(fields[3])
	if err != nil {
		t.Fatal(err)
	}
	return sid
}

// processesUnder lists live processes whose command line mentions dir.
func processesUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + en.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), dir) && processAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func checkNoProcesses(t *testing.T, dir string) {
	t.Helper()
	// Reaping of an exited child can lag its exit by a moment.
	deadline := time.Now().Add(3 * time.Second)
	left := processesUnder(dir)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		left = processesUnder(dir)
	}
	for _, pid := range left {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if len(left) > 0 {
		t.Errorf("processes left behind: %v", left)
	}
}

// dialAgent does the hybrid-vsock handshake on a sandbox's agent socket
// and returns the instance id the fake answers with.
func dialAgent(t *testing.T, path string, port uint32) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if ok, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("handshake on %s: %q %v", path, ok, err)
	}
	id, _ := br.ReadString('\n')
	return strings.TrimSpace(id)
}

// waitLog waits for the sandbox log at path to contain want: the log
// keeper writes it a moment after Firecracker does.
func waitLog(t *testing.T, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Errorf("log %s lacks %q: %q", path, want, b)
			return string(b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
