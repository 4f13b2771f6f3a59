package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"atelier/internal/network"
	"atelier/internal/sandbox"
)

func TestParseMountinfo(t *testing.T) {
	in := strings.Join([]string{
		`22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw`,
		`90 22 7:3 / /var/lib/sandbox/bundles/abcdefghijkl/rootfs rw,nodev,relatime - ext4 /dev/loop3 rw`,
		`91 22 0:50 / /tmp/with\040space rw - tmpfs tmpfs rw`,
		`92 22 0:4 net:[4026532] /run/netns/atelier-x rw shared:5 master:2 - nsfs nsfs rw`,
		`garbage`,
	}, "\n")
	got, err := parseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{
		{Point: "/", FSType: "ext4", Source: "/dev/vda"},
		{Point: "/var/lib/sandbox/bundles/abcdefghijkl/rootfs", FSType: "ext4", Source: "/dev/loop3"},
		{Point: "/tmp/with space", FSType: "tmpfs", Source: "tmpfs"},
		{Point: "/run/netns/atelier-x", FSType: "nsfs", Source: "nsfs"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:    "/a b",
		`/tab\011x`:  "/tab\tx",
		`/back\134s`: `/back\s`,
		`/plain`:     "/plain",
		`/short\04`:  `/short\04`,
		`/end\`:      `/end\`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoopsBacking(t *testing.T) {
	dir := t.TempDir()
	old := sysBlock
	sysBlock = filepath.Join(dir, "sys", "block")
	t.Cleanup(func() { sysBlock = old })
	vol := filepath.Join(dir, "vol.ext4")
	if err := os.WriteFile(vol, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(vol)
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.ext4")
	if err := os.Symlink(vol, link); err != nil {
		t.Fatal(err)
	}
	for dev, backing := range map[string]string{
		"loop0": real + "\n",
		"loop1": "/other/file.ext4\n",
		"loop7": real + " (deleted)\n",
		"loop9": "", // bound to nothing readable: ignored
	} {
		p := filepath.Join(sysBlock, dev, "loop")
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if backing != "" {
			if err := os.WriteFile(filepath.Join(p, "backing_file"), []byte(backing), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// An unbound device has no loop/ dir at all.
	if err := os.MkdirAll(filepath.Join(sysBlock, "loop2"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{vol, link} {
		got, err := LoopsBacking(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"/dev/loop0", "/dev/loop7"}; !slices.Equal(got, want) {
			t.Errorf("LoopsBacking(%s) = %v, want %v", path, got, want)
		}
	}
	got, err := LoopsBacking(filepath.Join(dir, "absent.ext4"))
	if err != nil || len(got) != 0 {
		t.Errorf("absent file: %v, %v", got, err)
	}
}

func TestDetectCgroups(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  cgroupSupport
	}{
		{"hybrid v1", map[string]string{
			"cpu/cpu.cfs_quota_us": "-1", "memory/memory.limit_in_bytes": "9223372036854771712",
			"pids/cgroup.procs": "", "unified/cgroup.controllers": "",
		}, cgroupSupport{CPU: true, Memory: true, Pids: true}},
		{"v1 without memory", map[string]string{"cpu/cpu.cfs_quota_us": "-1"}, cgroupSupport{CPU: true}},
		{"v2", map[string]string{"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"},
			cgroupSupport{CPU: true, Memory: true, Pids: true}},
		{"v2 without controllers", map[string]string{"cgroup.controllers": "\n"}, cgroupSupport{}},
		{"nothing mounted", nil, cgroupSupport{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, body := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := detectCgroups(root); got != tc.want {
				t.Errorf("detectCgroups = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestCgroupsPath(t *testing.T) {
	for _, tc := range []struct{ parent, want string }{
		{"/atelier", "/atelier/atelier-abcdefghijkl"},
		{"/atelier/", "/atelier/atelier-abcdefghijkl"},
		{"machine.slice/atelier", "machine.slice/atelier/atelier-abcdefghijkl"},
	} {
		if got := cgroupsPath(tc.parent, "atelier-abcdefghijkl"); got != tc.want {
			t.Errorf("cgroupsPath(%q) = %q, want %q", tc.parent, got, tc.want)
		}
	}
}

func TestRuncMessage(t *testing.T) {
	tests := []struct{ in, want string }{
		{`time="2026-01-01T00:00:00Z" level=error msg="runc run failed: unable to start container process: exec: \"/sbin/x\": stat /sbin/x: no such file or directory"`,
			`runc run failed: unable to start container process: exec: "/sbin/x": stat /sbin/x: no such file or directory`},
		{`{"level":"error","msg":"container does not exist","time":"2026"}`, "container does not exist"},
		{"plain failure\n\nsecond line\n", "plain failure; second line"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := runcMessage([]byte(tc.in)); got != tc.want {
			t.Errorf("runcMessage(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNewOptions(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	abs := t.TempDir()
	good := Options{StateDir: abs + "/runc", BundleDir: abs + "/bundles", SocketDir: abs + "/sockets", LogDir: abs + "/log"}
	tests := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"valid", func(*Options) {}, ""},
		{"relative bundle dir", func(o *Options) { o.BundleDir = "bundles" }, "BundleDir must be an absolute path"},
		{"missing state dir", func(o *Options) { o.StateDir = "" }, "StateDir must be an absolute path"},
		{"relative agent path", func(o *Options) { o.AgentPath = "sbin/agent" }, "AgentPath must be absolute"},
		{"socket paths too long", func(o *Options) { o.SocketDir = "/" + strings.Repeat("s", 100) }, "max 107"},
		{"no runc", func(o *Options) { o.Runc = filepath.Join(abs, "no-runc") }, "find runc"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.edit(&o)
			d, err := New(o)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if d.opts.AgentPath != DefaultAgentPath || d.opts.CgroupParent != DefaultCgroupParent ||
					d.opts.StopTimeout != DefaultStopTimeout || d.opts.NetnsPath("abcdefghijkl") != "/var/run/netns/atelier-abcdefghijkl" {
					t.Errorf("defaults not applied: %+v", d.opts)
				}
				if got := d.AgentSocket("abcdefghijkl"); got != abs+"/sockets/abcdefghijkl/agent.sock" {
					t.Errorf("AgentSocket = %s", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// The default must name the namespace the network driver makes.
	if got, want := DefaultNetnsPath("abcdefghijkl"), network.NetnsPath("abcdefghijkl"); got != want {
		t.Errorf("DefaultNetnsPath = %s, network.NetnsPath = %s", got, want)
	}
	if o := DefaultOptions("/var/lib/sandbox", "/var/log/sandbox"); o.StateDir != "/var/lib/sandbox/runc" ||
		o.BundleDir != "/var/lib/sandbox/bundles" || o.SocketDir != "/var/lib/sandbox/sockets" || o.LogDir != "/var/log/sandbox" {
		t.Errorf("DefaultOptions = %+v", o)
	}
}

// Calls about sandboxes that never ran touch nothing and need no root:
// the state dir tells that runc knows no such container.
func TestUnknownSandbox(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	abs := t.TempDir()
	d, err := New(Options{StateDir: abs + "/runc", BundleDir: abs + "/bundles", SocketDir: abs + "/sockets", LogDir: abs + "/log"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const id = "abcdefghijkl"
	if alive, err := d.Alive(ctx, id); err != nil || alive {
		t.Errorf("Alive = %v, %v; want false", alive, err)
	}
	if err := d.Stop(ctx, id); err != nil {
		t.Errorf("Stop of an unknown sandbox: %v", err)
	}
	if err := d.Destroy(ctx, id); err != nil {
		t.Errorf("Destroy of an unknown sandbox: %v", err)
	}
	if ids, err := d.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("List = %v, %v; want none", ids, err)
	}
	if err := d.Pause(ctx, id); !errors.Is(err, errNoContainer) {
		t.Errorf("Pause of an unknown sandbox: %v, want errNoContainer", err)
	}
	for _, bad := range []string{"", "ABCDEFGHIJKL", "../../etc/xx", "abcdefghijk", "abcdefghijkl/"} {
		if err := d.Boot(ctx, sandbox.Instance{ID: bad}); err == nil || !strings.Contains(err.Error(), "invalid sandbox id") {
			t.Errorf("Boot(%q): %v", bad, err)
		}
		if err := d.Stop(ctx, bad); err == nil {
			t.Errorf("Stop(%q) accepted", bad)
		}
		if err := d.Destroy(ctx, bad); err == nil {
			t.Errorf("Destroy(%q) accepted", bad)
		}
		if _, err := d.Alive(ctx, bad); err == nil {
			t.Errorf("Alive(%q) accepted", bad)
		}
	}
	if _, err := os.Stat(abs + "/bundles"); !os.IsNotExist(err) {
		t.Errorf("calls on unknown sandboxes created the bundle dir: %v", err)
	}
}

func TestCheckInstance(t *testing.T) {
	dir := t.TempDir()
	vol := filepath.Join(dir, "v.ext4")
	if err := os.WriteFile(vol, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	good := sandbox.Instance{ID: "abcdefghijkl", Vcpus: 1, MemoryMB: 256, IP: "172.16.0.10", DNS: []string{"172.16.0.1"}, Disk: vol}
	tests := []struct {
		name string
		edit func(*sandbox.Instance)
		want string
	}{
		{"valid", func(*sandbox.Instance) {}, ""},
		{"no volume", func(i *sandbox.Instance) { i.Disk = "" }, "no volume"},
		{"missing volume", func(i *sandbox.Instance) { i.Disk = filepath.Join(dir, "nope") }, "no such file"},
		{"volume is a dir", func(i *sandbox.Instance) { i.Disk = dir }, "not a regular file"},
		{"negative memory", func(i *sandbox.Instance) { i.MemoryMB = -1 }, "negative"},
		{"bad dns", func(i *sandbox.Instance) { i.DNS = []string{"x"} }, "dns server"},
		{"bad ip", func(i *sandbox.Instance) { i.IP = "172.16.0.300" }, "not an IP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inst := good
			tc.edit(&inst)
			files, err := checkInstance(inst)
			if tc.want == "" {
				if err != nil || files.hostname != "sandbox-abcdefghijkl\n" || !strings.Contains(files.resolv, "nameserver 172.16.0.1") {
					t.Errorf("checkInstance: %+v, %v", files, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkInstance: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCheckNetns(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "stale")
	if err := os.WriteFile(plain, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := checkNetns(filepath.Join(dir, "absent")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("absent netns: %v", err)
	}
	if err := checkNetns(plain); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("plain file: %v", err)
	}
	// /proc/self/ns/net is an nsfs file, as a pinned namespace is.
	if err := checkNetns("/proc/self/ns/net"); err != nil {
		t.Errorf("own netns: %v", err)
	}
}

func TestWaitExit(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	ctx := context.Background()
	if waitExit(ctx, pid, 20*time.Millisecond) {
		t.Fatal("waitExit reported a running process as exited")
	}
	if processGone(pid) {
		t.Fatal("processGone reported a running process")
	}
	cmd.Process.Kill()
	// Unreaped, the child is a zombie: it counts as exited.
	if !waitExit(ctx, pid, 10*time.Second) {
		t.Fatal("waitExit missed the exit")
	}
	if !processGone(pid) {
		t.Error("processGone missed the zombie")
	}
	cmd.Wait()
	if !waitExit(ctx, pid, time.Second) || !processGone(pid) {
		t.Error("a reaped process is not gone")
	}
}

func TestCanonical(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	realDir, _ := filepath.EvalSymlinks(dir)
	for in, want := range map[string]string{
		filepath.Join(dir, "link"):                 filepath.Join(realDir, "real"),
		filepath.Join(dir, "link", "not", "yet"):   filepath.Join(realDir, "real", "not", "yet"),
		filepath.Join(dir, "absent", "x") + "/../": filepath.Join(realDir, "absent"),
	} {
		got, err := canonical(in)
		if err != nil || got != want {
			t.Errorf("canonical(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestAgentDialerRefusesSymlinks(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	abs := t.TempDir()
	d, err := New(Options{StateDir: abs + "/runc", BundleDir: abs + "/bundles", SocketDir: abs + "/s", LogDir: abs + "/log"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const id = "abcdefghijkl"
	if err := os.MkdirAll(d.socketDir(id), 0o700); err != nil {
		t.Fatal(err)
	}
	// A host socket the guest must not be able to point the manager at.
	other := filepath.Join(abs, "host.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("host"))
			c.Close()
		}
	}()
	dial := d.AgentDialer(id)

	if _, err := dial(ctx); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dial before the agent listens: %v, want not-exist", err)
	}
	if err := os.Symlink(other, d.AgentSocket(id)); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(ctx); err == nil {
		c.Close()
		t.Fatal("dial followed a symlink planted in the socket dir")
	}
	os.Remove(d.AgentSocket(id))
	if err := os.WriteFile(d.AgentSocket(id), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(ctx); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("dial of a regular file: %v", err)
	}
	os.Remove(d.AgentSocket(id))

	// The real thing works.
	ln2, err := net.Listen("unix", d.AgentSocket(id))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	go func() {
		if c, err := ln2.Accept(); err == nil {
			c.Write([]byte("agent"))
			c.Close()
		}
	}()
	c, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	if string(b) != "agent" {
		t.Errorf("read %q from the agent socket", b)
	}
}

// A loop device bound again to another file after our unmount (its number
// reused by another sandbox) must not be detached by our teardown.
func TestDetachLoopOfLeavesReusedDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root: attaches a loop device")
	}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	want, _ := canonical(img)
	ctx := context.Background()
	if err := detachLoopOf(ctx, dev, "/elsewhere/other.ext4"); err != nil {
		t.Fatal(err)
	}
	if devs, _ := LoopsBacking(img); len(devs) != 1 || devs[0] != dev {
		t.Fatalf("a device serving another file was detached: %v", devs)
	}
	if err := detachLoopOf(ctx, dev, want); err != nil {
		t.Fatal(err)
	}
	if devs, _ := LoopsBacking(img); len(devs) != 0 {
		t.Fatalf("our device is still bound: %v", devs)
	}
}

// New picks the user namespace by mode and host: auto falls back with a
// loud warning, on refuses to start, off never probes.
func TestNewUserNSModes(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed")
	}
	orig := probeUserNS
	t.Cleanup(func() { probeUserNS = orig })
	unsupported := errors.New("no idmapped mounts here")
	tests := []struct {
		name       string
		mode       UserNSMode
		probe      error
		searchable bool
		want       bool
		wantErr    string
		wantWarn   bool
	}{
		{"default on a capable host", "", nil, true, true, "", false},
		{"auto on a capable host", UserNSAuto, nil, true, true, "", false},
		{"auto without support", UserNSAuto, unsupported, true, false, "", true},
		{"on without support", UserNSOn, unsupported, true, false, "userNamespace: on", false},
		{"auto with a private state dir", UserNSAuto, nil, false, false, "", true},
		{"on with a private state dir", UserNSOn, nil, false, false, "chmod o+x", false},
		{"off", UserNSOff, unsupported, true, false, "", false},
		{"bad mode", "sometimes", nil, true, false, "want auto, on or off", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			probed := false
			probeUserNS = func() (usernsTools, error) { probed = true; return usernsTools{}, tc.probe }
			dir := t.TempDir()
			mode := os.FileMode(0o700)
			if tc.searchable {
				mode = 0o711
			}
			if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			d, err := New(Options{StateDir: dir + "/runc", BundleDir: dir + "/bundles", SocketDir: dir + "/sockets",
				LogDir: dir + "/log", UserNS: tc.mode, Log: slog.New(slog.NewTextHandler(&logs, nil))})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.UserNS() != tc.want {
				t.Errorf("UserNS() = %v, want %v", d.UserNS(), tc.want)
			}
			if warned := strings.Contains(logs.String(), "USER NAMESPACES UNAVAILABLE"); warned != tc.wantWarn {
				t.Errorf("warning logged = %v, want %v:\n%s", warned, tc.wantWarn, logs.String())
			}
			if tc.mode == UserNSOff && probed {
				t.Error("userNamespace off still probed the host")
			}
			if !d.Seccomp() {
				t.Error("seccomp off by default")
			}
		})
	}
}
