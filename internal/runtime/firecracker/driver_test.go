package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/bootcontract"
	"atelier/internal/config"
	"atelier/internal/runtime/firecracker/fcapi"
	"atelier/internal/runtime/firecracker/fctest"
	"atelier/internal/sandbox"
)

const (
	idA = "aaaaaaaaaaa1"
	idB = "bbbbbbbbbbb2"
	idC = "ccccccccccc3"
)

func TestBootSendsTheSpecSequence(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	inst := e.inst(idA)
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	t.Cleanup(func() { _ = e.d.Destroy(ctx, idA) })

	recs := e.records(idA)
	e.checkSpec(recs)
	got := calls(recs)
	want := []string{
		"GET /",
		"PUT /machine-config",
		"PUT /boot-source",
		"PUT /drives/rootfs",
		"PUT /network-interfaces/eth0",
		"PUT /vsock",
		"PUT /actions",
		"GET /",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("calls =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	mc := body(t, recs, "PUT", "/machine-config")
	if mc["vcpu_count"] != 2.0 || mc["mem_size_mib"] != 512.0 {
		t.Errorf("machine-config = %v", mc)
	}
	bs := body(t, recs, "PUT", "/boot-source")
	args, _ := bs["boot_args"].(string)
	wantArgs, err := bootcontract.Cmdline(bootcontract.Guest{
		ID: idA, IP: netip.MustParseAddr("172.16.0.10"), Gateway: netip.MustParseAddr("172.16.0.1"), PrefixLen: 24,
		DNS: []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")}, AgentPort: 9998,
	})
	if err != nil {
		t.Fatal(err)
	}
	if bs["kernel_image_path"] != e.opts.Kernel || args != wantArgs {
		t.Errorf("boot-source = %v\nwant boot_args %q", bs, wantArgs)
	}
	dr := body(t, recs, "PUT", "/drives/rootfs")
	if dr["drive_id"] != "rootfs" || dr["path_on_host"] != e.disk || dr["is_root_device"] != true || dr["is_read_only"] != false {
		t.Errorf("drive = %v", dr)
	}
	ni := body(t, recs, "PUT", "/network-interfaces/eth0")
	if ni["iface_id"] != "eth0" || ni["host_dev_name"] != inst.Link || ni["guest_mac"] != "06:00:ac:10:00:0a" {
		t.Errorf("network interface = %v", ni)
	}
	vs := body(t, recs, "PUT", "/vsock")
	// Relative to the process's working directory, SocketDir.
	if vs["guest_cid"] != 3.0 || vs["uds_path"] != idA+".vsock" {
		t.Errorf("vsock = %v", vs)
	}
	if act := body(t, recs, "PUT", "/actions"); act["action_type"] != "InstanceStart" {
		t.Errorf("action = %v", act)
	}

	// The files of a running sandbox, at the seed's paths.
	if got := e.d.AgentSocket(idA); got != filepath.Join(e.opts.SocketDir, idA+".vsock") || !isSocket(got) {
		t.Errorf("agent socket %s missing", got)
	}
	if !isSocket(filepath.Join(e.opts.SocketDir, idA+".sock")) {
		t.Error("API socket missing")
	}
	if got := dialAgent(t, e.d.AgentSocket(idA), e.d.AgentPort()); got != idA {
		t.Errorf("agent socket answered for %q", got)
	}
	waitLog(t, filepath.Join(e.opts.LogDir, idA+".log"), "Running Firecracker")
	pid := e.pid(idA)
	if recs[0].PID != pid {
		t.Errorf("pid file %d, answering process %d", pid, recs[0].PID)
	}
	// Its own session: no signal to the manager's group or session reaches it.
	if sid := sessionID(t, pid); sid != pid {
		t.Errorf("session id %d, want %d (Setsid)", sid, pid)
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	wantCmd := strings.Join([]string{e.opts.Binary, "--api-sock", filepath.Join(e.opts.SocketDir, idA+".sock"),
		"--log-path", filepath.Join(e.opts.SocketDir, idA+".log.fifo"), "--level", "Warning", "--id", idA}, "\x00") + "\x00"
	if string(cmdline) != wantCmd {
		t.Errorf("cmdline = %q\nwant %q", cmdline, wantCmd)
	}
	environ, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if strings.Contains(string(environ), "HOME=") || strings.Contains(string(environ), "PATH=") {
		t.Errorf("firecracker inherited the manager's environment: %q", environ)
	}
}

func TestAliveStopKeepsLog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if alive, err := e.d.Alive(ctx, idA); err != nil || alive {
		t.Fatalf("Alive before boot = %v, %v", alive, err)
	}
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(idA)
	if alive, err := e.d.Alive(ctx, idA); err != nil || !alive {
		t.Fatalf("Alive after boot = %v, %v", alive, err)
	}
	if err := e.d.Stop(ctx, idA); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if alive, err := e.d.Alive(ctx, idA); err != nil || alive {
		t.Fatalf("Alive after stop = %v, %v", alive, err)
	}
	if processAlive(pid) {
		t.Error("firecracker still running after Stop")
	}
	// Clean shutdown through the guest, not a kill.
	if got := calls(e.records(idA)); got[len(got)-1] != "PUT /actions" {
		t.Errorf("last call %q, want the SendCtrlAltDel", got[len(got)-1])
	}
	if act := body(t, e.records(idA)[len(e.records(idA))-1:], "PUT", "/actions"); act["action_type"] != "SendCtrlAltDel" {
		t.Errorf("stop action = %v", act)
	}
	if got := files(t, e.opts.SocketDir); len(got) != 0 {
		t.Errorf("socket dir after stop: %v", got)
	}
	logData, err := os.ReadFile(filepath.Join(e.opts.LogDir, idA+".log"))
	if err != nil || !strings.Contains(string(logData), "Vmm is stopping") {
		t.Errorf("log after stop = %q, %v (weak point 36: stop must keep it)", logData, err)
	}
	// Stop again, and a start after the stop, work.
	if err := e.d.Stop(ctx, idA); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatalf("Boot after Stop: %v", err)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
}

func TestStopResumesAPausedGuestFirst(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Pause(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Stop(ctx, idA); err != nil {
		t.Fatal(err)
	}
	recs := e.records(idA)
	e.checkSpec(recs)
	tail := calls(recs)[len(recs)-3:]
	if !slices.Equal(tail, []string{"GET /", "PATCH /vm", "PUT /actions"}) {
		t.Fatalf("stop calls = %v", tail)
	}
	if st := body(t, recs[len(recs)-2:], "PATCH", "/vm"); st["state"] != "Resumed" {
		t.Errorf("stop sent %v", st)
	}
	logData, _ := os.ReadFile(filepath.Join(e.opts.LogDir, idA+".log"))
	if !strings.Contains(string(logData), "Vmm is stopping") {
		t.Errorf("guest did not shut down cleanly: %q", logData)
	}
}

func TestStopKillsAGuestThatIgnoresCtrlAltDel(t *testing.T) {
	e := newEnv(t, fctest.EnvIgnoreCtrlAltDel+"=1")
	e.d.stopGrace = 50 * time.Millisecond // the guest will not react anyway
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(idA)
	if err := e.d.Stop(ctx, idA); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if processAlive(pid) {
		t.Fatal("firecracker survived Stop")
	}
	if got := files(t, e.opts.SocketDir); len(got) != 0 {
		t.Errorf("socket dir after stop: %v", got)
	}
	if !exists(filepath.Join(e.opts.LogDir, idA+".log")) {
		t.Error("stop removed the log")
	}
}

func TestDestroyRemovesEverything(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(idA)
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if processAlive(pid) {
		t.Fatal("firecracker survived Destroy")
	}
	if got := append(files(t, e.opts.SocketDir), files(t, e.opts.LogDir)...); len(got) != 0 {
		t.Errorf("left after destroy: %v", got)
	}
	if alive, _ := e.d.Alive(ctx, idA); alive {
		t.Error("Alive after Destroy")
	}
}

func TestTeardownOfUnknownSandboxSucceeds(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for range 2 {
		if err := e.d.Stop(ctx, idB); err != nil {
			t.Errorf("Stop unknown: %v", err)
		}
		if err := e.d.Destroy(ctx, idB); err != nil {
			t.Errorf("Destroy unknown: %v", err)
		}
	}
	// Leftovers of a crashed run (no process) are cleaned up.
	if err := os.MkdirAll(e.opts.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{idB + ".sock", idB + ".vsock", idB + ".pid"} {
		if err := os.WriteFile(filepath.Join(e.opts.SocketDir, f), []byte("999999999\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.d.Destroy(ctx, idB); err != nil {
		t.Fatal(err)
	}
	if got := files(t, e.opts.SocketDir); len(got) != 0 {
		t.Errorf("left: %v", got)
	}
	for _, bad := range []string{"", "../../etc", "ABCDEFGHIJKL", "short"} {
		if err := e.d.Stop(ctx, bad); err == nil {
			t.Errorf("Stop(%q) accepted", bad)
		}
		if err := e.d.Destroy(ctx, bad); err == nil {
			t.Errorf("Destroy(%q) accepted", bad)
		}
		if _, err := e.d.Alive(ctx, bad); err == nil {
			t.Errorf("Alive(%q) accepted", bad)
		}
	}
}

func TestBootFailureCleansUp(t *testing.T) {
	tests := []struct {
		name string
		// fail is the call the fake rejects once; empty for none.
		fail string
		// setup changes the environment before Boot.
		setup func(e *env)
		want  string
	}{
		{name: "machine", fail: "PUT /machine-config", want: "injected failure"},
		{name: "root drive", fail: "PUT /drives/rootfs", want: "injected failure"},
		{name: "network", fail: "PUT /network-interfaces/eth0", want: "injected failure"},
		{name: "vsock", fail: "PUT /vsock", want: "injected failure"},
		{name: "start", fail: "PUT /actions", want: "injected failure"},
		{name: "kernel", setup: func(e *env) { _ = os.Remove(e.opts.Kernel) }, want: "kernel file cannot be opened"},
		{name: "dies", setup: func(e *env) {
			// Without the fake's variable the binary is just the test
			// binary, which rejects firecracker's flags and exits.
			e.d.env = nil
		}, want: "exited"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var extra []string
			if tt.fail != "" {
				extra = append(extra, fctest.EnvFail+"="+tt.fail)
			}
			e := newEnv(t, extra...)
			if tt.setup != nil {
				tt.setup(e)
			}
			err := e.d.Boot(context.Background(), e.inst(idA))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Boot err = %v, want %q", err, tt.want)
			}
			var apiErr *fcapi.APIError
			if tt.fail != "" && (!errors.As(err, &apiErr) || apiErr.StatusCode != 400) {
				t.Errorf("err %v does not carry the API status", err)
			}
			if left := processesUnder(e.root); len(left) != 0 {
				t.Errorf("processes left: %v", left)
			}
			if got := append(files(t, e.opts.SocketDir), files(t, e.opts.LogDir)...); len(got) != 0 {
				t.Errorf("files left: %v", got)
			}
			if alive, _ := e.d.Alive(context.Background(), idA); alive {
				t.Error("Alive after failed boot")
			}
		})
	}
}

func TestBootRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		mod  func(i *sandbox.Instance)
		want string
	}{
		{"id", func(i *sandbox.Instance) { i.ID = "../x" }, "invalid sandbox id"},
		{"no vcpus", func(i *sandbox.Instance) { i.Vcpus = 0 }, "vcpus"},
		{"too many vcpus", func(i *sandbox.Instance) { i.Vcpus = 33 }, "vcpus"},
		{"no memory", func(i *sandbox.Instance) { i.MemoryMB = 0 }, "memory"},
		{"ipv6", func(i *sandbox.Instance) { i.IP = "fd00::1" }, "guest ip"},
		{"ip with extra args", func(i *sandbox.Instance) { i.IP = "172.16.0.10 init=/bin/sh" }, "guest ip"},
		{"gateway", func(i *sandbox.Instance) { i.Gateway = "x" }, "gateway"},
		{"prefix", func(i *sandbox.Instance) { i.PrefixLen = 33 }, "prefix"},
		{"mac", func(i *sandbox.Instance) { i.MAC = "06:00:ac:10:00" }, "mac"},
		{"dns injection", func(i *sandbox.Instance) { i.DNS = []string{"8.8.8.8 init=/bin/sh"} }, "dns server"},
		{"ipv6 dns", func(i *sandbox.Instance) { i.DNS = []string{"2606:4700:4700::1111"} }, "IPv4"},
		{"three dns", func(i *sandbox.Instance) { i.DNS = []string{"1.1.1.1", "8.8.8.8", "9.9.9.9"} }, "dns servers"},
		{"no dns", func(i *sandbox.Instance) { i.DNS = nil }, "dns servers"},
		{"relative disk", func(i *sandbox.Instance) { i.Disk = "disk.ext4" }, "disk"},
		{"link", func(i *sandbox.Instance) { i.Link = "tap a" }, "link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inst := e.inst(idA)
			tt.mod(&inst)
			err := e.d.Boot(context.Background(), inst)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if exists(e.opts.SocketDir) {
				t.Error("a rejected boot touched the host")
			}
		})
	}
}

// The command line is the boot contract's for the instance's lease, with
// the configured agent port: the guest parses back what the driver meant.
func TestBootArgs(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		prefix int
		dns    []string
		port   uint32
	}{
		{24, []string{"8.8.8.8"}, 0},
		{16, []string{"1.1.1.1", "9.9.9.9"}, 10000},
		{30, []string{"172.16.0.1"}, 0},
	}
	for _, tt := range tests {
		inst := e.inst(idA)
		inst.PrefixLen, inst.DNS = tt.prefix, tt.dns
		d := e.d
		if tt.port != 0 {
			o := e.opts
			o.AgentPort = tt.port
			var err error
			if d, err = New(o); err != nil {
				t.Fatal(err)
			}
		}
		p, err := d.plan(inst)
		if err != nil {
			t.Fatal(err)
		}
		b, err := bootcontract.Parse(p.boot.BootArgs)
		if err != nil {
			t.Fatalf("guest cannot parse %q: %v", p.boot.BootArgs, err)
		}
		want := uint32(DefaultAgentPort)
		if tt.port != 0 {
			want = tt.port
		}
		if b.ID != idA || b.IP.String() != inst.IP || b.Gateway.String() != inst.Gateway || b.PrefixLen != tt.prefix ||
			fmt.Sprint(b.DNS) != fmt.Sprint(tt.dns) || b.AgentPort != want || b.Init != bootcontract.InitPath ||
			b.Hostname != bootcontract.Hostname(idA) {
			t.Errorf("/%d %v: guest reads %+v from %q", tt.prefix, tt.dns, b, p.boot.BootArgs)
		}
	}
}

func TestBootRefusesARunningSandbox(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(idA)
	if err := e.d.Boot(ctx, e.inst(idA)); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Boot err = %v, want ErrRunning", err)
	}
	if e.pid(idA) != pid || !processAlive(pid) {
		t.Fatal("second Boot disturbed the running sandbox")
	}
	// Even with its pid file lost, the running process is found.
	if err := os.Remove(filepath.Join(e.opts.SocketDir, idA+".pid")); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Boot(ctx, e.inst(idA)); !errors.Is(err, ErrRunning) {
		t.Fatalf("Boot without pid file err = %v, want ErrRunning", err)
	}
	// And Destroy still kills it.
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if processAlive(pid) {
		t.Fatal("Destroy without pid file left the process")
	}
}

func TestBootReplacesStaleSockets(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := os.MkdirAll(e.opts.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{idA + ".sock", idA + ".vsock"} {
		if err := os.WriteFile(filepath.Join(e.opts.SocketDir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatalf("Boot over stale sockets: %v", err)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
}

// The process must outlive the boot's context and the driver (the manager
// can restart without stopping sandboxes); a new driver finds, lists,
// drives and stops it.
func TestFirecrackerOutlivesContextAndManager(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	cancel()
	pid := e.pid(idA)

	d2 := e.newDriver()
	if err := d2.Pause(context.Background(), idA); err != nil {
		t.Fatalf("Pause through a new driver after cancel: %v", err)
	}
	if err := d2.Resume(context.Background(), idA); err != nil {
		t.Fatal(err)
	}
	if alive, _ := d2.Alive(context.Background(), idA); !alive || !processAlive(pid) {
		t.Fatal("firecracker did not survive the cancelled context")
	}
	if ids, err := d2.List(context.Background()); err != nil || !slices.Equal(ids, []string{idA}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	if err := d2.Stop(context.Background(), idA); err != nil {
		t.Fatalf("Stop through a new driver: %v", err)
	}
	if alive, _ := d2.Alive(context.Background(), idA); alive {
		t.Fatal("Alive after Stop")
	}
}

func TestPauseResume(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.d.Pause(ctx, idA); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Pause of a stopped sandbox = %v", err)
	}
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	c := fcapi.New(filepath.Join(e.opts.SocketDir, idA+".sock"))
	state := func() string {
		info, err := c.DescribeInstance(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State
	}
	if err := e.d.Pause(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != fcapi.StatePaused {
		t.Fatalf("state after Pause = %q", s)
	}
	if err := e.d.Resume(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != fcapi.StateRunning {
		t.Fatalf("state after Resume = %q", s)
	}
	e.checkSpec(e.records(idA))
	if err := e.d.Resume(ctx, idA); !fcapi.IsStatus(err, 400) {
		t.Errorf("Resume of a running guest = %v, want Firecracker's 400", err)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
}

func TestPIDReuseGuard(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	if err := os.MkdirAll(e.opts.SocketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(filepath.Join(e.opts.SocketDir, idB+".pid"), sleep.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.d.List(ctx); !slices.Equal(ids, []string{idB}) {
		t.Fatalf("List = %v", ids)
	}
	if alive, err := e.d.Alive(ctx, idB); err != nil || alive {
		t.Fatalf("a pid file naming sleep is Alive = %v, %v", alive, err)
	}
	if err := e.d.Destroy(ctx, idB); err != nil {
		t.Fatal(err)
	}
	if !processAlive(sleep.Process.Pid) {
		t.Fatal("Destroy killed an unrelated process")
	}
	if exists(filepath.Join(e.opts.SocketDir, idB+".pid")) {
		t.Error("stale pid file kept")
	}

	// Another sandbox's firecracker is not this one's either.
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(filepath.Join(e.opts.SocketDir, idB+".pid"), e.pid(idA)); err != nil {
		t.Fatal(err)
	}
	if alive, _ := e.d.Alive(ctx, idB); alive {
		t.Fatal("sandbox B is Alive through A's process")
	}
	if err := e.d.Stop(ctx, idB); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Destroy(ctx, idB); err != nil {
		t.Fatal(err)
	}
	if alive, _ := e.d.Alive(ctx, idA); !alive {
		t.Fatal("teardown of B stopped A")
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(sleep.Process.Pid, 0); err != nil {
		t.Fatalf("sleep gone: %v", err)
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if ids, err := e.d.List(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("List of nothing = %v, %v", ids, err)
	}
	for _, id := range []string{idB, idA} {
		inst := e.inst(id)
		if err := e.d.Boot(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	if ids, _ := e.d.List(ctx); !slices.Equal(ids, []string{idA, idB}) {
		t.Fatalf("List = %v", ids)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.d.List(ctx); !slices.Equal(ids, []string{idB}) {
		t.Fatalf("List after destroy = %v", ids)
	}
	if err := e.d.Destroy(ctx, idB); err != nil {
		t.Fatal(err)
	}
}

func TestOptions(t *testing.T) {
	cfg := config.Default()
	o := OptionsFromConfig(cfg)
	want := Options{
		Binary:      "/usr/local/bin/firecracker",
		Kernel:      "/var/lib/sandbox/kernel/vmlinux",
		SocketDir:   "/var/lib/sandbox/sockets",
		LogDir:      "/var/log/sandbox",
		SnapshotDir: "/var/lib/sandbox/snapshots",
		AgentPort:   9998,
		Jailer:      "/usr/local/bin/jailer",
		ChrootBase:  "/var/lib/sandbox/jailer",
		UIDBase:     900000,
	}
	if o != want {
		t.Fatalf("OptionsFromConfig =\n%+v\nwant\n%+v", o, want)
	}
	if _, err := New(o); err != nil {
		t.Fatalf("New(production options): %v", err)
	}
	bad := []func(o *Options){
		func(o *Options) { o.Binary = "" },
		func(o *Options) { o.Kernel = "vmlinux" },
		func(o *Options) { o.SocketDir = "/" + strings.Repeat("x", 80) },
		func(o *Options) { o.SnapshotDir = "" },
		func(o *Options) { o.ChrootBase = "" },
		func(o *Options) { o.Jailer = "jailer" },
		func(o *Options) { o.UIDBase = 0 },
		func(o *Options) { o.UIDBase = 1<<32 - 1 },
		func(o *Options) { o.CgroupParent = "../escape" },
		func(o *Options) { o.CgroupParent = "/abs" },
	}
	for i, mod := range bad {
		o := want
		mod(&o)
		if _, err := New(o); err == nil {
			t.Errorf("case %d: New accepted %+v", i, o)
		}
	}
}
