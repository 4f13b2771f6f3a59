package container

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"atelier/internal/agent"
	"atelier/internal/testimage"
)

// The hostile guest: root in its sandbox, trying to become root on the
// host. These tests run its attacks and show each one stopped.

// requireUserNS fails under ATELIER_TEST_STRICT (CI runs as root on a
// kernel with idmapped mounts) and skips elsewhere when the driver could
// not enable user namespaces.
func requireUserNS(t *testing.T, d *Driver) {
	t.Helper()
	if d.UserNS() {
		return
	}
	if os.Getenv("ATELIER_TEST_STRICT") != "" {
		t.Fatal("user namespaces unavailable on this host; CI needs them (see the driver's warning)")
	}
	t.Skip("user namespaces unavailable on this host (see the driver's warning)")
}

// hostStatus reads fields of /proc/<pid>/status as the host sees them.
func hostStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

var debugfsUser = regexp.MustCompile(`User:\s+(\d+)\s`)

func initPid(t *testing.T, e *env, id string) int {
	t.Helper()
	st, err := e.d.state(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st.Pid
}

func hostOwner(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// escapeArgv is the argv prefix of a host process holding the credentials
// of the guest process pid but none of its confinement (mount namespace,
// root directory, seccomp): what a container escape gives the attacker.
// In a user namespace that is joining the namespace as its root (nsenter
// even grants every capability there, more than the guest's root holds);
// without one, the same uid, groups and capability set on the host.
func escapeArgv(t *testing.T, pid int) []string {
	t.Helper()
	mine, _ := os.Readlink("/proc/self/ns/user")
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		t.Fatal(err)
	}
	if mine != theirs {
		return []string{"nsenter", "--target", strconv.Itoa(pid), "--user", "--"}
	}
	st := hostStatus(t, pid)
	uid, gid := strings.Fields(st["Uid"])[1], strings.Fields(st["Gid"])[1]
	bnd, err := strconv.ParseUint(st["CapBnd"], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for i := 0; i < 64; i++ {
		if bnd&(1<<i) != 0 {
			caps = append(caps, "+cap_"+strconv.Itoa(i))
		}
	}
	set := "-all," + strings.Join(caps, ",")
	return []string{"setpriv", "--reuid", uid, "--regid", gid, "--clear-groups",
		"--bounding-set", set, "--inh-caps", set, "--ambient-caps", set, "--"}
}

// A guest's root that escapes its container holds nothing on the host:
// the host sees it as an unprivileged uid of the sandbox's own range, so
// it can neither read root's files nor write where root may, nor touch
// another sandbox's files or processes. Fails where guest root is host
// root (userNamespace off), and the neighbour part where sandboxes share
// one range.
func TestEscapedGuestRootOwnsNothingOnHost(t *testing.T) {
	for _, tool := range []string{"nsenter", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("requires %s (util-linux)", tool)
		}
	}
	e := newEnv(t, false)
	requireUserNS(t, e.d)
	s := e.newSandbox()
	e.boot(s)
	pid := initPid(t, e, s.id)
	// A neighbour: another user's sandbox on the same host.
	other := e.newSandbox()
	oc := e.boot(other)
	execOK(t, oc, "sh", "-c", "echo neighbour secret > /root/secret")
	otherPid := initPid(t, e, other.id)

	// What the operator keeps from root only: a secret and a directory.
	secret := filepath.Join(e.dir, "host-secret")
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rootDir := filepath.Join(e.dir, "host-root-only")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	escape := escapeArgv(t, pid)
	for _, attack := range []struct {
		name string
		argv []string
	}{
		{"read root's file", []string{"cat", secret}},
		{"write into root's directory", []string{"touch", filepath.Join(rootDir, "pwned")}},
		{"chown root's file", []string{"chown", "0:0", secret, "--no-dereference"}},
		{"kill a host process", []string{"kill", "-0", "1"}},
		// Per-sandbox ranges: the neighbour's files and processes belong
		// to other host uids.
		{"read the neighbour's files", []string{"cat", filepath.Join(e.d.rootfs(other.id), "root", "secret")}},
		{"signal the neighbour's processes", []string{"kill", "-0", strconv.Itoa(otherPid)}},
	} {
		out, err := exec.Command(escape[0], append(escape[1:], attack.argv...)...).CombinedOutput()
		if err == nil {
			t.Errorf("escaped guest root could %s (%q): %s", attack.name, attack.argv, out)
		}
	}
	if _, err := os.Stat(filepath.Join(rootDir, "pwned")); err == nil {
		t.Error("escaped guest root wrote into a root-only host directory")
	}
}

// The guest's root, and what su gives the image's user, is the sandbox's
// host uid, never 0: as the host's /proc says, and as the owner of what it
// writes to the one host directory it shares. The volume keeps the ids
// the guest sees. Fails without the user namespace.
func TestGuestRootIsUnprivilegedOnHost(t *testing.T) {
	e := newEnv(t, false)
	requireUserNS(t, e.d)
	s := e.newSandbox()
	c := e.boot(s)
	ctx := context.Background()
	want, err := hostIDRange(s.inst.IP, s.inst.PrefixLen)
	if err != nil {
		t.Fatal(err)
	}
	if want.HostID == 0 {
		t.Fatal("id range starts at 0")
	}
	host := strconv.FormatUint(uint64(want.HostID), 10)

	st := hostStatus(t, initPid(t, e, s.id))
	if st["Uid"] != strings.Repeat(host+" ", 3)+host || st["Gid"] != strings.Repeat(host+" ", 3)+host {
		t.Errorf("guest init seen from the host: Uid %q Gid %q, want all %s", st["Uid"], st["Gid"], host)
	}
	if got := execOK(t, c, "id", "-u"); got != "0" {
		t.Errorf("id -u in the guest = %q, want 0", got)
	}
	if got := execOK(t, c, "cat", "/proc/self/uid_map"); strings.Join(strings.Fields(got), " ") != "0 "+host+" 65536" {
		t.Errorf("uid_map = %q", got)
	}

	// The socket dir is a host directory: what the guest's root makes
	// there belongs to the sandbox's uid on the host.
	execOK(t, c, "touch", "/run/atelier/by-root")
	if uid, gid := hostOwner(t, filepath.Join(e.d.socketDir(s.id), "by-root")); uid != want.HostID || gid != want.HostID {
		t.Errorf("file of the guest's root is %d:%d on the host, want %d", uid, gid, want.HostID)
	}
	if uid, _ := hostOwner(t, e.d.AgentSocket(s.id)); uid != want.HostID {
		t.Errorf("agent socket owned by host uid %d, want %d", uid, want.HostID)
	}

	// sudo's stand-in: the image's user becomes root in the sandbox, and
	// that root is as unprivileged on the host.
	r, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{testimage.SuPath, "-c", "id -u; touch /run/atelier/by-su"}, User: "dev"})
	if err != nil || r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "0" {
		t.Fatalf("su as dev: %+v, %v; want uid 0", r, err)
	}
	if uid, _ := hostOwner(t, filepath.Join(e.d.socketDir(s.id), "by-su")); uid != want.HostID {
		t.Errorf("file of su's root is host uid %d, want %d", uid, want.HostID)
	}

	// The volume: the host sees the mapped ids through the idmapped
	// mount; the disk stores the guest's.
	execOK(t, c, "sh", "-c", "echo root > /root/by-root")
	if r, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "echo dev > /home/dev/by-dev"}, User: "dev"}); err != nil || r.ExitCode != 0 {
		t.Fatalf("write as dev: %+v, %v", r, err)
	}
	if got := execOK(t, c, "sh", "-c", "stat -c %u:%g /home/dev /home/dev/by-dev /bin/su"); got != "1000:1000\n1000:1000\n0:0" {
		t.Errorf("owners in the guest:\n%s", got)
	}
	if uid, _ := hostOwner(t, filepath.Join(e.d.rootfs(s.id), "home", "dev", "by-dev")); uid != want.HostID+testimage.DevUID {
		t.Errorf("dev's file is host uid %d through the mount, want %d", uid, want.HostID+testimage.DevUID)
	}
	if err := e.d.Stop(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	for path, uid := range map[string]string{"/root/by-root": "0", "/home/dev/by-dev": "1000"} {
		out, err := exec.Command("debugfs", "-R", "stat "+path, s.inst.Disk).Output()
		if m := debugfsUser.FindSubmatch(out); err != nil || m == nil || string(m[1]) != uid {
			t.Errorf("%s on the volume: want uid %s, debugfs: %v\n%.300s", path, uid, err, out)
		}
	}
}

// The seccomp filter refuses what a hostile root uses against the kernel,
// and PID 1 holds Docker's capability set and no more. Without the filter
// the first attempts succeed (a new user namespace, keyrings,
// userfaultfd, perf events, io_uring).
func TestSeccompRefusesKernelAttackSurface(t *testing.T) {
	e := newEnv(t, false)
	s := e.newSandbox()
	c := e.boot(s)
	if !e.d.Seccomp() {
		t.Fatal("driver built without seccomp")
	}
	installProbe(t, c)
	out := execOK(t, c, "probe", "syscalls")
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		name, res, _ := strings.Cut(line, " ")
		seen++
		switch {
		case name == "getpid" && res != "OK":
			t.Errorf("getpid, allowed by the profile: %s", res)
		case name != "getpid" && res != "EPERM":
			t.Errorf("%s as the guest's root: %s, want EPERM", name, res)
		}
	}
	if seen < 10 {
		t.Errorf("probe reported %d attempts:\n%s", seen, out)
	}

	st := execOK(t, c, "cat", "/proc/1/status")
	for _, want := range []string{"CapEff:\t00000000a80425fb", "CapBnd:\t00000000a80425fb", "Seccomp:\t2"} {
		if !strings.Contains(st, want+"\n") {
			t.Errorf("guest PID 1 status lacks %q:\n%s", want, st)
		}
	}
	// no_new_privs is off only where setuid leads to an unprivileged root.
	nnp := "NoNewPrivs:\t1"
	if e.d.UserNS() {
		nnp = "NoNewPrivs:\t0"
	}
	if !strings.Contains(st, nnp+"\n") {
		t.Errorf("guest PID 1 status lacks %q", nnp)
	}
}

// With userNamespace off the driver says what the operator chose: guest
// root is host root, and no process may gain privileges by exec (su fails).
func TestUserNamespaceOff(t *testing.T) {
	e := newEnv(t, false, func(o *Options) { o.UserNS = UserNSOff })
	if e.d.UserNS() {
		t.Fatal("UserNS() with userNamespace off")
	}
	s := e.newSandbox()
	c := e.boot(s)
	if st := hostStatus(t, initPid(t, e, s.id)); st["Uid"] != "0 0 0 0" || st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("guest init: Uid %q NoNewPrivs %q Seccomp %q; want host root, no_new_privs, filtered", st["Uid"], st["NoNewPrivs"], st["Seccomp"])
	}
	r, err := c.Exec(context.Background(), agent.ExecRequest{Argv: []string{testimage.SuPath, "-c", "id -u"}, User: "dev"})
	if err != nil || r.ExitCode == 0 {
		t.Errorf("su as dev without a user namespace: %+v, %v; want refused", r, err)
	}
}
