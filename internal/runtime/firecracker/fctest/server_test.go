package fctest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

type harness struct {
	t    *testing.T
	dir  string
	srv  *Server
	hc   *http.Client
	spec *Spec
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "disk.ext4", "disk2.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spec := loadSpec(t)
	srv := NewServer(spec, filepath.Join(dir, "api.sock"))
	srv.ID = "sbx1"
	srv.Dir = dir
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	sock := filepath.Join(dir, "api.sock")
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	return &harness{t: t, dir: dir, srv: srv, hc: hc, spec: spec}
}

// do sends a request; "$DIR" in the body stands for the harness directory.
func (h *harness) do(method, path, body string) (int, string) {
	h.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(strings.ReplaceAll(body, "$DIR", h.dir))
	}
	req, err := http.NewRequest(method, "http://localhost"+path, r)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type step struct {
	method, path, body string
	status             int
	// fault is a substring of the expected fault_message.
	fault string
}

var (
	machineCfg = step{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`, 204, ""}
	bootSrc    = step{"PUT", "/boot-source", `{"kernel_image_path":"$DIR/vmlinux","boot_args":"console=ttyS0"}`, 204, ""}
	rootDrive  = step{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"$DIR/disk.ext4","is_root_device":true,"is_read_only":false}`, 204, ""}
	eth0       = step{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:0a"}`, 204, ""}
	vsock      = step{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"v.sock"}`, 204, ""}
	start      = step{"PUT", "/actions", `{"action_type":"InstanceStart"}`, 204, ""}
	pause      = step{"PATCH", "/vm", `{"state":"Paused"}`, 204, ""}
	resume     = step{"PATCH", "/vm", `{"state":"Resumed"}`, 204, ""}
	snapCreate = step{"PUT", "/snapshot/create", `{"snapshot_path":"$DIR/s.snap","mem_file_path":"$DIR/s.mem","snapshot_type":"Full"}`, 204, ""}
)

var booted = []step{machineCfg, bootSrc, rootDrive, eth0, vsock, start}

func with(s step, status int, fault string) step {
	s.status, s.fault = status, fault
	return s
}

func seq(groups ...[]step) []step {
	var out []step
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

func TestServerStateRules(t *testing.T) {
	tests := []struct {
		name      string
		steps     []step
		wantState string
	}{
		{"full boot", booted, StateRunning},
		{"start without boot source", []step{machineCfg, with(start, 400, "without kernel configuration")}, StateNotStarted},
		{"start without machine config", []step{bootSrc, with(start, 400, "without machine configuration")}, StateNotStarted},
		{"start twice", seq(booted, []step{with(start, 400, "after starting")}), StateRunning},
		{"machine config after start", seq(booted, []step{with(machineCfg, 400, "not supported after starting")}), StateRunning},
		{"boot source after start", seq(booted, []step{with(bootSrc, 400, "not supported after starting")}), StateRunning},
		{"drive after start", seq(booted, []step{with(rootDrive, 400, "not supported after starting")}), StateRunning},
		{"network after start", seq(booted, []step{with(eth0, 400, "not supported after starting")}), StateRunning},
		{"vsock after start", seq(booted, []step{with(vsock, 400, "not supported after starting")}), StateRunning},
		{"logger after start", seq(booted, []step{{"PUT", "/logger", `{"log_path":"$DIR/l"}`, 400, "not supported after starting"}}), StateRunning},
		{"pause before start", []step{with(pause, 400, "before starting")}, StateNotStarted},
		{"snapshot before start", []step{with(snapCreate, 400, "before starting")}, StateNotStarted},
		{"drive patch before start", []step{rootDrive, {"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"$DIR/disk2.ext4"}`, 400, "before starting"}}, StateNotStarted},
		{"ctrl-alt-del before start", []step{{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 400, "before starting"}}, StateNotStarted},
		{"pause and resume", seq(booted, []step{pause, with(pause, 400, "while it is Paused"), resume, with(resume, 400, "while it is Running")}), StateRunning},
		{"snapshot while running", seq(booted, []step{with(snapCreate, 400, "not paused")}), StateRunning},
		{"snapshot while paused", seq(booted, []step{pause, snapCreate}), StatePaused},
		{"diff snapshot without dirty tracking", seq(booted, []step{pause, {"PUT", "/snapshot/create", `{"snapshot_path":"$DIR/d.snap","mem_file_path":"$DIR/d.mem","snapshot_type":"Diff"}`, 400, "dirty page tracking"}}), StatePaused},
		{"snapshot into missing dir", seq(booted, []step{pause, {"PUT", "/snapshot/create", `{"snapshot_path":"$DIR/no/s.snap","mem_file_path":"$DIR/no/s.mem"}`, 400, "microVM state"}}), StatePaused},
		{"drive patch after start", seq(booted, []step{{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"$DIR/disk2.ext4"}`, 204, ""}}), StateRunning},
		{"patch of unknown drive", seq(booted, []step{{"PATCH", "/drives/data", `{"drive_id":"data"}`, 400, "Invalid block device ID"}}), StateRunning},
		{"drive id mismatch", []step{{"PUT", "/drives/a", `{"drive_id":"b","path_on_host":"$DIR/disk.ext4","is_root_device":false,"is_read_only":true}`, 400, "does not match"}}, StateNotStarted},
		{"iface id mismatch", []step{{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, 400, "does not match"}}, StateNotStarted},
		{"missing disk", []step{{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"$DIR/none","is_root_device":true,"is_read_only":false}`, 400, "backing file"}}, StateNotStarted},
		{"missing kernel", []step{{"PUT", "/boot-source", `{"kernel_image_path":"$DIR/none"}`, 400, "kernel file cannot be opened"}}, StateNotStarted},
		{"second root drive", []step{rootDrive, {"PUT", "/drives/other", `{"drive_id":"other","path_on_host":"$DIR/disk2.ext4","is_root_device":true,"is_read_only":false}`, 400, "root block device already exists"}}, StateNotStarted},
		{"duplicate tap", []step{eth0, {"PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`, 400, "already in use"}}, StateNotStarted},
		{"odd vcpus with smt", []step{{"PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":512,"smt":true}`, 400, "SMT"}}, StateNotStarted},
		{"zero memory", []step{{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, 400, "memory size"}}, StateNotStarted},
		{"vsock path taken", []step{{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"api.sock"}`, 400, "vsock"}}, StateNotStarted},
		{"vsock moved", []step{vsock, {"PUT", "/vsock", `{"guest_cid":3,"uds_path":"w.sock"}`, 204, ""}}, StateNotStarted},
		{"unknown path", []step{{"GET", "/nope", "", 400, "Invalid request path"}}, StateNotStarted},
		{"unknown method", []step{{"DELETE", "/vm", "", 400, "Invalid request method"}}, StateNotStarted},
		{"empty required body", []step{{"PUT", "/actions", "", 400, "Empty request body"}}, StateNotStarted},
		{"invalid body names the field", []step{{"PUT", "/machine-config", `{"vcpu_count":64,"mem_size_mib":512}`, 400, "vcpu_count"}}, StateNotStarted},
		{"unknown property rejected", []step{{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"v.sock","cid":3}`, 400, "cid: unknown property"}}, StateNotStarted},
		{"flush metrics without metrics", []step{{"PUT", "/actions", `{"action_type":"FlushMetrics"}`, 400, "metrics"}}, StateNotStarted},
		{"metrics then flush", []step{{"PUT", "/metrics", `{"metrics_path":"$DIR/m"}`, 204, ""}, {"PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204, ""}}, StateNotStarted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			for i, s := range tt.steps {
				status, body := h.do(s.method, s.path, s.body)
				if status != s.status {
					t.Fatalf("step %d %s %s: status %d (%s), want %d", i, s.method, s.path, status, body, s.status)
				}
				if s.fault != "" {
					var e struct {
						FaultMessage string `json:"fault_message"`
					}
					if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.FaultMessage, s.fault) {
						t.Fatalf("step %d %s %s: fault %q, want it to contain %q", i, s.method, s.path, body, s.fault)
					}
				}
			}
			if got := h.srv.State(); got != tt.wantState {
				t.Errorf("state = %q, want %q", got, tt.wantState)
			}
			reqs := h.srv.Requests()
			if len(reqs) != len(tt.steps) {
				t.Fatalf("logged %d requests, want %d", len(reqs), len(tt.steps))
			}
			for i, r := range reqs {
				if r.Status != tt.steps[i].status || r.Method != tt.steps[i].method || r.Path != tt.steps[i].path {
					t.Errorf("log[%d] = %s %s %d, want %s %s %d", i, r.Method, r.Path, r.Status, tt.steps[i].method, tt.steps[i].path, tt.steps[i].status)
				}
			}
		})
	}
}

// A rejected request changes nothing: the same machine config that failed
// validation is not what GET /machine-config reports.
func TestRejectedRequestChangesNothing(t *testing.T) {
	h := newHarness(t)
	if st, _ := h.do("PUT", "/machine-config", `{"vcpu_count":4,"mem_size_mib":512,"bogus":1}`); st != 400 {
		t.Fatalf("status %d", st)
	}
	st, body := h.do("GET", "/machine-config", "")
	if st != 200 || !strings.Contains(body, `"vcpu_count":1`) {
		t.Fatalf("GET /machine-config = %d %s, want the defaults", st, body)
	}
	if err := h.spec.ValidateDefinition("MachineConfiguration", []byte(body), Options{DenyUnknown: true}); err != nil {
		t.Errorf("GET /machine-config answer breaks the spec: %v", err)
	}
}

func TestDescribeInstanceAndVMConfigMatchSpec(t *testing.T) {
	h := newHarness(t)
	check := func(def, path, wantState string) map[string]any {
		t.Helper()
		st, body := h.do("GET", path, "")
		if st != 200 {
			t.Fatalf("GET %s = %d %s", path, st, body)
		}
		if err := h.spec.ValidateDefinition(def, []byte(body), Options{DenyUnknown: true}); err != nil {
			t.Fatalf("GET %s answer breaks the spec: %v", path, err)
		}
		var m map[string]any
		_ = json.Unmarshal([]byte(body), &m)
		if wantState != "" && (m["state"] != wantState || m["id"] != "sbx1" || m["vmm_version"] != "1.14.1" || m["app_name"] != "Firecracker") {
			t.Fatalf("GET / = %v", m)
		}
		return m
	}
	check("InstanceInfo", "/", StateNotStarted)
	for _, s := range booted {
		if st, body := h.do(s.method, s.path, s.body); st != 204 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, st, body)
		}
	}
	check("InstanceInfo", "/", StateRunning)
	cfg := check("FullVmConfiguration", "/vm/config", "")
	if cfg["vsock"].(map[string]any)["uds_path"] != "v.sock" || len(cfg["drives"].([]any)) != 1 {
		t.Errorf("vm config = %v", cfg)
	}
	h.do(pause.method, pause.path, pause.body)
	check("InstanceInfo", "/", StatePaused)
}

func TestFailNextFailsOnceAfterValidation(t *testing.T) {
	h := newHarness(t)
	h.srv.FailNext("PUT", "/machine-config", 400, "injected")
	// An invalid body still gets its validation error, not the injection.
	if st, body := h.do("PUT", "/machine-config", `{"vcpu_count":1}`); st != 400 || !strings.Contains(body, "mem_size_mib") {
		t.Fatalf("invalid body: %d %s", st, body)
	}
	if st, body := h.do(machineCfg.method, machineCfg.path, machineCfg.body); st != 400 || !strings.Contains(body, "injected") {
		t.Fatalf("injected: %d %s", st, body)
	}
	if _, body := h.do("GET", "/machine-config", ""); !strings.Contains(body, `"vcpu_count":1`) {
		t.Fatalf("failed call changed the config: %s", body)
	}
	if st, _ := h.do(machineCfg.method, machineCfg.path, machineCfg.body); st != 204 {
		t.Fatalf("second call: %d", st)
	}
}

func TestCtrlAltDelShutsDownARunningGuestOnly(t *testing.T) {
	h := newHarness(t)
	for _, s := range append(booted, pause) {
		h.do(s.method, s.path, s.body)
	}
	if st, _ := h.do("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`); st != 204 {
		t.Fatalf("status %d", st)
	}
	select {
	case <-h.srv.Done():
		t.Fatal("a paused guest shut down")
	default:
	}
	h.do(resume.method, resume.path, resume.body)
	if st, _ := h.do("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`); st != 204 {
		t.Fatalf("status %d", st)
	}
	select {
	case <-h.srv.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after SendCtrlAltDel")
	}
}

func TestVsockHandshake(t *testing.T) {
	h := newHarness(t)
	h.do(vsock.method, vsock.path, vsock.body)
	got := dialVsock(t, filepath.Join(h.dir, "v.sock"), 9998)
	if got != "sbx1" {
		t.Fatalf("vsock answered %q, want sbx1", got)
	}
}

// dialVsock does the hybrid-vsock handshake and returns what the stand-in
// sends after the OK line (its instance id).
func dialVsock(t *testing.T, path string, port int) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial vsock: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+strconv.Itoa(port)+"\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	ok, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("handshake answer %q, %v", ok, err)
	}
	id, _ := br.ReadString('\n')
	return strings.TrimSpace(id)
}

func TestSnapshotLoadOnlyOnAFreshProcess(t *testing.T) {
	src := newHarness(t)
	for _, s := range append(booted, pause, snapCreate) {
		if st, body := src.do(s.method, s.path, s.body); st != 204 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, st, body)
		}
	}
	load := func(resume bool, tap string) string {
		return `{"snapshot_path":"` + src.dir + `/s.snap","mem_backend":{"backend_type":"File","backend_path":"` + src.dir +
			`/s.mem"},"resume_vm":` + map[bool]string{true: "true", false: "false"}[resume] +
			`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"` + tap + `"}]}`
	}
	tests := []struct {
		name      string
		before    []step
		body      string
		status    int
		fault     string
		wantState string
	}{
		{"fresh, paused", nil, load(false, "tap1"), 204, "", StatePaused},
		{"fresh, resumed", nil, load(true, "tap1"), 204, "", StateRunning},
		{"after logger only", []step{{"PUT", "/logger", `{"log_path":"$DIR/l","level":"Warning"}`, 204, ""}}, load(true, "tap1"), 204, "", StateRunning},
		{"after machine config", []step{machineCfg}, load(true, "tap1"), 400, "after configuring", StateNotStarted},
		{"after boot", booted, load(true, "tap1"), 400, "after configuring", StateRunning},
		{"unknown override", nil, strings.Replace(load(true, "tap1"), `"iface_id":"eth0"`, `"iface_id":"eth9"`, 1), 400, "eth9", StateNotStarted},
		{"both memory fields", nil, strings.Replace(load(true, "tap1"), `"resume_vm"`, `"mem_file_path":"/m","resume_vm"`, 1), 400, "Exactly one", StateNotStarted},
		{"missing snapshot", nil, strings.Replace(load(true, "tap1"), "s.snap", "none.snap", 1), 400, "snapshot file", StateNotStarted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			for _, s := range tt.before {
				h.do(s.method, s.path, s.body)
			}
			st, body := h.do("PUT", "/snapshot/load", tt.body)
			if st != tt.status || !strings.Contains(body, tt.fault) {
				t.Fatalf("load = %d %s, want %d %q", st, body, tt.status, tt.fault)
			}
			if got := h.srv.State(); got != tt.wantState {
				t.Fatalf("state = %q, want %q", got, tt.wantState)
			}
			if st != 204 {
				return
			}
			// The vsock is back at the recorded relative path, in this
			// process's directory; the TAP is the override.
			if got := dialVsock(t, filepath.Join(h.dir, "v.sock"), 52); got != "sbx1" {
				t.Errorf("restored vsock answered %q", got)
			}
			_, cfg := h.do("GET", "/vm/config", "")
			if !strings.Contains(cfg, `"host_dev_name":"tap1"`) || strings.Contains(cfg, "boot-source") {
				t.Errorf("vm config after load = %s", cfg)
			}
			// A second load is refused: the process is no longer fresh.
			if st, _ := h.do("PUT", "/snapshot/load", tt.body); st != 400 {
				t.Errorf("second load = %d, want 400", st)
			}
		})
	}
}

// Firecracker binds a restored vsock at the recorded path: two restores
// resolving it to the same file collide, which is why the runtime gives
// each restore its own working directory.
func TestRestoredVsockPathsCollide(t *testing.T) {
	src := newHarness(t)
	for _, s := range append(booted, pause, snapCreate) {
		src.do(s.method, s.path, s.body)
	}
	body := `{"snapshot_path":"` + src.dir + `/s.snap","mem_backend":{"backend_type":"File","backend_path":"` + src.dir + `/s.mem"},"resume_vm":true}`
	a, b := newHarness(t), newHarness(t)
	b.srv.Dir = a.dir
	if st, resp := a.do("PUT", "/snapshot/load", body); st != 204 {
		t.Fatalf("first restore: %d %s", st, resp)
	}
	if st, resp := b.do("PUT", "/snapshot/load", body); st != 400 || !strings.Contains(resp, "vsock") {
		t.Fatalf("second restore into the same directory: %d %s, want a vsock bind failure", st, resp)
	}
}

func TestStartFailsOnExistingSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(loadSpec(t), sock)
	if err := srv.Start(); err == nil {
		_ = srv.Close()
		t.Fatal("Start over an existing socket path succeeded")
	}
}
