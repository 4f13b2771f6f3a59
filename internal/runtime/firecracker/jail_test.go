package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"atelier/internal/ids"
	"atelier/internal/runtime/firecracker/fctest"
	"atelier/internal/sandbox"
)

// The jailed driver runs the static stand-in (fctest/fcfake) installed as
// "jailer" and "firecracker": the fake jailer checks its arguments as
// Firecracker's jailer documents them, builds the chroot, writes real
// cgroups, chroots for real and drops to the sandbox's uid, so the fake
// firecracker reaches only what the driver put in its jail.

const testUIDBase = 910000

var fcfake struct {
	once sync.Once
	dir  string
	err  error
}

// fakeBinaries builds fcfake once and installs it as jailer and
// firecracker in a directory of its own.
func fakeBinaries(t *testing.T) (jailer, firecracker string) {
	t.Helper()
	fcfake.once.Do(func() {
		dir, err := os.MkdirTemp("", "atelier-fcfake-")
		if err != nil {
			fcfake.err = err
			return
		}
		fcfake.dir = dir
		bin := filepath.Join(dir, "fcfake")
		cmd := exec.Command("go", "build", "-o", bin, "./fctest/fcfake")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fcfake.err = fmt.Errorf("build fcfake: %v\n%s", err, out)
			return
		}
		for _, name := range []string{"jailer", "firecracker"} {
			if out, err := exec.Command("cp", bin, filepath.Join(dir, name)).CombinedOutput(); err != nil {
				fcfake.err = fmt.Errorf("install %s: %v: %s", name, err, out)
				return
			}
		}
	})
	if fcfake.err != nil {
		t.Fatal(fcfake.err)
	}
	return filepath.Join(fcfake.dir, "jailer"), filepath.Join(fcfake.dir, "firecracker")
}

type jailEnv struct {
	*env
	cgroup string
}

// newJailEnv is newEnv with the jailer on, a cgroup parent of its own and,
// at cleanup, a check that no jail, cgroup or mount is left.
func newJailEnv(t *testing.T, extra ...string) *jailEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root: the jailer chroots, changes uid and writes cgroups")
	}
	jailer, fc := fakeBinaries(t)
	e := &jailEnv{env: newEnv(t), cgroup: "atlt-" + ids.New(6)}
	// The fake jailer opens the record log as root before it drops
	// privileges.
	e.opts.Binary, e.opts.Jailer = fc, jailer
	e.opts.ChrootBase = filepath.Join(e.root, "jail")
	e.opts.UIDBase, e.opts.CgroupParent = testUIDBase, e.cgroup
	for _, dir := range []string{e.opts.ChrootBase, e.opts.SocketDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(e.opts.Kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	e.d = e.newDriver(extra...)
	t.Cleanup(func() { e.checkNoJailLeft() })
	return e
}

func (e *jailEnv) checkNoJailLeft() {
	t := e.t
	// Jailed processes do not name the test's directory on their command
	// line; their root does.
	entries, _ := os.ReadDir("/proc")
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + en.Name() + "/environ")
		if strings.Contains(string(cmd), fctest.EnvRecordFD+"=") && jailedBy(pid, e.recDir) && processAlive(pid) {
			t.Errorf("jailed process %d left", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(e.opts.ChrootBase, "*", "*")); len(left) > 0 {
		t.Errorf("jails left: %v", left)
	}
	points, _ := mountPoints()
	for _, p := range points {
		if strings.HasPrefix(p, e.root+"/") {
			t.Errorf("mount left: %s", p)
			_ = unix.Unmount(p, unix.MNT_DETACH)
		}
	}
	dirs, _ := cgroupDirs(e.cgroup, "x")
	for _, d := range dirs {
		parent := filepath.Dir(d)
		if sub, _ := filepath.Glob(filepath.Join(parent, "*", "tasks")); len(sub) > 0 {
			t.Errorf("cgroups left: %v", sub)
		}
		_ = unix.Rmdir(parent)
	}
}

// jailedBy reports whether pid's request record (fd 4, from the fake
// jailer) is in recDir: how a jailed fake is traced back to its test.
func jailedBy(pid int, recDir string) bool {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", pid))
	return err == nil && strings.HasPrefix(l, recDir+"/")
}

func (e *jailEnv) jailerRecord(id string) fctest.JailerRecord {
	e.t.Helper()
	b, err := os.ReadFile(fctest.JailerRecordPath(e.recDir, id))
	if err != nil {
		e.t.Fatalf("jailer record: %v", err)
	}
	var r fctest.JailerRecord
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

func statT(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st
}

func statFollow(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st
}

func mustReadlink(t *testing.T, path string) string {
	t.Helper()
	s, err := os.Readlink(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// procStatus returns the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

func TestJailedBoot(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	inst := e.inst(idA) // 172.16.0.10/24: uid base + 10
	uid := testUIDBase + 10
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	pid := e.pid(idA)
	jail := filepath.Join(e.opts.ChrootBase, "firecracker", idA)
	root := filepath.Join(jail, "root")

	// The jailer's command line, argument for argument (docs/jailer.md).
	v := cgroupVersion()
	want := []string{e.opts.Jailer, "--id", idA, "--exec-file", e.opts.Binary,
		"--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(uid),
		"--chroot-base-dir", e.opts.ChrootBase, "--cgroup-version", strconv.Itoa(v),
		"--parent-cgroup", e.cgroup}
	for _, c := range cgroupLimits(v, inst.Vcpus, inst.MemoryMB) {
		want = append(want, "--cgroup", c)
	}
	want = append(want, "--", "--api-sock", "/run/firecracker.socket", "--log-path", "/firecracker.log", "--level", "Warning")
	rec := e.jailerRecord(idA)
	if !slices.Equal(rec.Argv, want) {
		t.Errorf("jailer argv\n%q\nwant\n%q", rec.Argv, want)
	}
	if rec.ChrootDir != root {
		t.Errorf("chroot %s, want %s", rec.ChrootDir, root)
	}

	// The process: Firecracker's copy, the sandbox's uid and gid, chrooted.
	st := procStatus(t, pid)
	if f := strings.Fields(st["Uid"]); len(f) != 4 || f[0] != strconv.Itoa(uid) || f[1] != strconv.Itoa(uid) {
		t.Errorf("uid %q, want %d everywhere", st["Uid"], uid)
	}
	if f := strings.Fields(st["Gid"]); len(f) != 4 || f[0] != strconv.Itoa(uid) {
		t.Errorf("gid %q, want %d", st["Gid"], uid)
	}
	if st["Groups"] != "" {
		t.Errorf("supplementary groups %q", st["Groups"])
	}
	// Its root is the jail (compared as a file: in its own mount
	// namespace the path reads "/").
	if pr, jr := statFollow(t, fmt.Sprintf("/proc/%d/root", pid)), statFollow(t, root); pr.Dev != jr.Dev || pr.Ino != jr.Ino {
		t.Errorf("process root is not the jail %s", root)
	}
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == mustReadlink(t, "/proc/self/ns/mnt") {
		t.Error("the jailed firecracker shares the manager's mount namespace")
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 7 || args[0] != "/firecracker" || args[1] != "--id" || args[2] != idA ||
		!slices.Equal(args[len(args)-6:], want[len(want)-6:]) {
		t.Errorf("firecracker argv %q", args)
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	for _, kv := range strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00") {
		if kv != "" && !strings.HasPrefix(kv, "FCTEST_") {
			t.Errorf("firecracker environment has %q (the jailer clears it)", kv)
		}
	}

	// What Firecracker was told: paths inside its jail.
	recs := e.records(idA)
	e.checkSpec(recs)
	if bs := body(t, recs, "PUT", "/boot-source"); bs["kernel_image_path"] != "/vmlinux" {
		t.Errorf("boot source %v", bs)
	}
	if dr := body(t, recs, "PUT", "/drives/rootfs"); dr["path_on_host"] != "/rootfs" {
		t.Errorf("drive %v", dr)
	}
	if vs := body(t, recs, "PUT", "/vsock"); vs["uds_path"] != idA+".vsock" {
		t.Errorf("vsock %v", vs)
	}

	// The jail: each host file is the same inode, with the right owner.
	same := func(a, b string) bool {
		sa, sb := statT(t, a), statT(t, b)
		return sa.Dev == sb.Dev && sa.Ino == sb.Ino
	}
	for _, c := range []struct {
		path       string
		typ        uint32
		mode       uint32
		uid        int
		sameAs     string
		major, min uint32
	}{
		{path: root, typ: unix.S_IFDIR, mode: 0o700, uid: uid},
		{path: filepath.Join(root, "firecracker"), typ: unix.S_IFREG, uid: uid},
		{path: filepath.Join(root, "vmlinux"), typ: unix.S_IFREG, mode: 0o644, uid: 0, sameAs: e.opts.Kernel},
		{path: filepath.Join(root, "rootfs"), typ: unix.S_IFREG, uid: uid, sameAs: inst.Disk},
		// A FIFO the log keeper reads, not a host file.
		{path: filepath.Join(root, "firecracker.log"), typ: unix.S_IFIFO, mode: 0o600, uid: uid},
		{path: filepath.Join(root, "run", "firecracker.socket"), typ: unix.S_IFSOCK, uid: uid, sameAs: filepath.Join(e.opts.SocketDir, idA+".sock")},
		{path: filepath.Join(root, idA+".vsock"), typ: unix.S_IFSOCK, uid: uid, sameAs: filepath.Join(e.opts.SocketDir, idA+".vsock")},
		{path: filepath.Join(root, "dev", "net", "tun"), typ: unix.S_IFCHR, mode: 0o600, uid: uid, major: 10, min: 200},
		{path: filepath.Join(root, "dev", "kvm"), typ: unix.S_IFCHR, mode: 0o600, uid: uid, major: 10, min: 232},
	} {
		s := statT(t, c.path)
		if s.Mode&unix.S_IFMT != c.typ || int(s.Uid) != c.uid || int(s.Gid) != c.uid && c.uid != 0 {
			t.Errorf("%s: mode %o uid %d gid %d, want type %o uid %d", c.path, s.Mode, s.Uid, s.Gid, c.typ, c.uid)
		}
		if c.mode != 0 && s.Mode&0o7777 != c.mode {
			t.Errorf("%s: permissions %o, want %o", c.path, s.Mode&0o7777, c.mode)
		}
		if c.sameAs != "" && !same(c.path, c.sameAs) {
			t.Errorf("%s is not %s", c.path, c.sameAs)
		}
		if c.major != 0 && (unix.Major(s.Rdev) != c.major || unix.Minor(s.Rdev) != c.min) {
			t.Errorf("%s: device %d:%d", c.path, unix.Major(s.Rdev), unix.Minor(s.Rdev))
		}
	}
	// The seed's paths work: the agent socket answers, the log fills.
	if got := dialAgent(t, e.d.AgentSocket(idA), e.d.AgentPort()); got != idA {
		t.Errorf("agent socket answered for %q", got)
	}
	// Both of its outputs: the log FIFO and the serial console.
	waitLog(t, filepath.Join(e.opts.LogDir, idA+".log"), "Running Firecracker")
	waitLog(t, filepath.Join(e.opts.LogDir, idA+".log"), fctest.ConsoleHello)

	// Its cgroups carry the sandbox's limits and hold it.
	if len(rec.CgroupDirs) == 0 {
		t.Fatal("the jailer made no cgroup")
	}
	for _, dir := range rec.CgroupDirs {
		if filepath.Base(dir) != idA || filepath.Base(filepath.Dir(dir)) != e.cgroup {
			t.Errorf("cgroup %s is not <mount>/%s/%s", dir, e.cgroup, idA)
		}
		procs := "cgroup.procs"
		if v == 1 {
			procs = "tasks"
		}
		if b, _ := os.ReadFile(filepath.Join(dir, procs)); !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
			t.Errorf("%s does not hold firecracker %d: %q", dir, pid, b)
		}
	}
	for _, c := range cgroupLimits(v, inst.Vcpus, inst.MemoryMB) {
		file, value, _ := strings.Cut(c, "=")
		found := false
		for _, dir := range rec.CgroupDirs {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
				found = true
				if strings.TrimSpace(string(b)) != value {
					t.Errorf("%s = %q, want %q", file, strings.TrimSpace(string(b)), value)
				}
			}
		}
		if !found {
			t.Errorf("no cgroup has %s", file)
		}
	}

	// Stop: the process, the sockets and the jail (cgroups included) go;
	// the log stays.
	if err := e.d.Stop(ctx, idA); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if processAlive(pid) {
		t.Fatal("firecracker survived Stop")
	}
	if exists(jail) {
		t.Error("Stop left the jail")
	}
	for _, dir := range rec.CgroupDirs {
		if exists(dir) {
			t.Errorf("Stop left cgroup %s", dir)
		}
	}
	if got := files(t, e.opts.SocketDir); len(got) != 0 {
		t.Errorf("socket dir after stop: %v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(e.opts.LogDir, idA+".log")); !strings.Contains(string(b), "Vmm is stopping") {
		t.Errorf("log after stop %q", b)
	}
	// A second boot builds a fresh jail; Destroy removes the log as well.
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatalf("Boot after Stop: %v", err)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
	if got := append(files(t, e.opts.SocketDir), files(t, e.opts.LogDir)...); len(got) != 0 || exists(jail) {
		t.Errorf("left after destroy: %v, jail %v", got, exists(jail))
	}
}

// A guest that took over its Firecracker owns the jail. It must not make
// the manager's agent socket lead anywhere else on the host: a symlink
// where the vsock socket belongs is refused, and nothing connects to
// where it points.
func TestJailRefusesAPlantedSymlink(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim.sock")
	ln, err := net.Listen("unix", victim)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connected := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			connected <- struct{}{}
			c.Close()
		}
	}()
	e := newJailEnv(t, fctest.EnvHostileVsock+"=1", fctest.EnvHostileTarget+"="+victim)
	err = e.d.Boot(context.Background(), e.inst(idA))
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Boot = %v, want a refused symlink", err)
	}
	if exists(e.d.AgentSocket(idA)) {
		c, err := net.Dial("unix", e.d.AgentSocket(idA))
		if err == nil {
			c.Close()
		}
		t.Errorf("the agent socket exists after a refused boot")
	}
	select {
	case <-connected:
		t.Error("the manager connected to the socket the symlink points at")
	default:
	}
	if left := processesUnder(e.root); len(left) != 0 {
		t.Errorf("processes left: %v", left)
	}
}

// A manager that crashed leaves a jail and cgroups behind with no pid
// file: the reconciler finds the sandbox through List and Destroy clears
// everything.
func TestJailLeftoversAreListedAndDestroyed(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	// The kernel path may be a symlink to a versioned file.
	versioned := e.opts.Kernel + "-6.1.192"
	if err := os.Rename(e.opts.Kernel, versioned); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(versioned), e.opts.Kernel); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	pid := e.pid(idA)
	rec := e.jailerRecord(idA)
	// The crash: firecracker dies, its pid file is lost.
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for processAlive(pid) {
		syscall.Nanosleep(&syscall.Timespec{Nsec: 5e6}, nil)
	}
	if err := os.Remove(filepath.Join(e.opts.SocketDir, idA+".pid")); err != nil {
		t.Fatal(err)
	}
	d2 := e.newDriver()
	got, err := d2.List(ctx)
	if err != nil || !slices.Equal(got, []string{idA}) {
		t.Fatalf("List = %v, %v; want the jailed sandbox", got, err)
	}
	if alive, _ := d2.Alive(ctx, idA); alive {
		t.Fatal("a dead firecracker is Alive")
	}
	if err := d2.Destroy(ctx, idA); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	for _, dir := range append(rec.CgroupDirs, filepath.Dir(rec.ChrootDir)) {
		if exists(dir) {
			t.Errorf("%s left", dir)
		}
	}
	if got, _ := d2.List(ctx); len(got) != 0 {
		t.Errorf("List after Destroy = %v", got)
	}
}

// Across filesystems a hard link is impossible: the volume and the log are
// bind-mounted into the jail (and unmounted at teardown), the kernel is
// copied; a block device gets a node of its own.
func TestJailAcrossFilesystemsAndBlockDevices(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	other := filepath.Join(e.root, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", other, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(other, unix.MNT_DETACH) })
	e.opts.LogDir = filepath.Join(other, "log")
	e.opts.Kernel = filepath.Join(other, "vmlinux")
	if err := os.WriteFile(e.opts.Kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.d = e.newDriver()
	inst := e.inst(idA)
	inst.Disk = filepath.Join(other, "disk.ext4")
	if err := os.WriteFile(inst.Disk, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	root := filepath.Join(e.opts.ChrootBase, "firecracker", idA, "root")
	points, _ := mountPoints()
	if !slices.Contains(points, filepath.Join(root, "rootfs")) {
		t.Error("rootfs is not bind-mounted into the jail")
	}
	if k := statT(t, filepath.Join(root, "vmlinux")); k.Uid != testUIDBase+10 || k.Mode&0o777 != 0o400 {
		t.Errorf("kernel copy: uid %d mode %o", k.Uid, k.Mode&0o777)
	}
	waitLog(t, filepath.Join(e.opts.LogDir, idA+".log"), "Running Firecracker")
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatalf("Destroy: %v", err)
	}

	// A block device volume.
	out, err := exec.Command("losetup", "-f", "--show", inst.Disk).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	inst.Disk = loop
	if err := e.d.Boot(ctx, inst); err != nil {
		t.Fatalf("Boot from %s: %v", loop, err)
	}
	host, node := statT(t, loop), statT(t, filepath.Join(root, "rootfs"))
	if node.Mode&unix.S_IFMT != unix.S_IFBLK || node.Rdev != host.Rdev || node.Uid != testUIDBase+10 || node.Mode&0o777 != 0o600 {
		t.Errorf("jail's device node: mode %o rdev %x uid %d; host %x", node.Mode, node.Rdev, node.Uid, host.Rdev)
	}
	if h := statT(t, loop); h.Uid != 0 {
		t.Errorf("the host's device node changed owner to %d", h.Uid)
	}
	if err := e.d.Destroy(ctx, idA); err != nil {
		t.Fatal(err)
	}
}

// Snapshots leave the jail as copies the jailed user cannot touch, and a
// restore puts them into the new sandbox's jail.
func TestJailedSnapshotRestore(t *testing.T) {
	e := newJailEnv(t)
	ctx := context.Background()
	if err := e.d.Boot(ctx, e.inst(idA)); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Snapshot(ctx, idA, "snap"); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	state, mem := e.d.SnapshotPaths("snap")
	for _, p := range []string{state, mem} {
		s := statT(t, p)
		if s.Uid != 0 || s.Nlink != 1 || s.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("%s: uid %d links %d mode %o, want a root-owned file of its own", p, s.Uid, s.Nlink, s.Mode)
		}
	}
	root := filepath.Join(e.opts.ChrootBase, "firecracker", idA, "root")
	for _, p := range []string{"snapshot.state", "snapshot.mem"} {
		if exists(filepath.Join(root, p)) {
			t.Errorf("%s left in the jail", p)
		}
	}
	inst := e.inst(idB)
	inst.IP = "172.16.0.11"
	disk := filepath.Join(e.root, "disk-b.ext4")
	if err := os.WriteFile(disk, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	inst.Disk = disk
	if err := e.d.Restore(ctx, inst, "snap"); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := dialAgent(t, e.d.AgentSocket(idB), e.d.AgentPort()); got != idB {
		t.Errorf("restored agent socket answered for %q", got)
	}
	recs := e.records(idB)
	e.checkSpec(recs)
	load := body(t, recs, "PUT", "/snapshot/load")
	if load["snapshot_path"] != "/snapshot.state" {
		t.Errorf("load %v", load)
	}
	if r := e.jailerRecord(idB); !slices.Contains(r.Argv, strconv.Itoa(testUIDBase+11)) {
		t.Errorf("restored firecracker does not run as its sandbox's uid: %q", r.Argv)
	}
	for _, id := range []string{idA, idB} {
		if err := e.d.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestJailID(t *testing.T) {
	d := &Driver{opts: Options{UIDBase: 900000}}
	for _, c := range []struct {
		ip     string
		prefix int
		want   int
		bad    bool
	}{
		{"172.16.0.10", 24, 900010, false},
		{"172.16.3.10", 16, 900000 + 3*256 + 10, false},
		{"10.0.0.255", 24, 900255, false},
		{"fd00::1", 64, 0, true},
		{"172.16.0.10", 8, 0, true},
	} {
		got, err := d.jailID(sandboxInst(c.ip, c.prefix))
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("%s/%d: %d, %v; want %d", c.ip, c.prefix, got, err, c.want)
		}
	}
}

func sandboxInst(ip string, prefix int) sandbox.Instance {
	return sandbox.Instance{IP: ip, PrefixLen: prefix}
}
