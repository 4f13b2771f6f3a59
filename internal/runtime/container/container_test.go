package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"atelier/internal/agent"
	"atelier/internal/loopdev"
)

func TestLifecycle(t *testing.T) {
	e := newEnv(t, true)
	s := e.newSandbox()
	s.inst.Vcpus, s.inst.MemoryMB = 2, 300
	ctx := context.Background()
	c := e.boot(s)

	if alive, err := e.d.Alive(ctx, s.id); err != nil || !alive {
		t.Fatalf("Alive after boot = %v, %v", alive, err)
	}
	if ids, err := e.d.List(ctx); err != nil || !slices.Equal(ids, []string{s.id}) {
		t.Errorf("List = %v, %v; want [%s]", ids, err, s.id)
	}
	if ms, _ := e.d.Mounts(); !slices.Equal(ms, []string{e.d.rootfs(s.id), filepath.Join(e.d.bundleDir(s.id), sysfsDir), e.d.socketDir(s.id)}) {
		t.Errorf("Mounts = %v, want the rootfs, the sysfs and the socket dir", ms)
	}
	if devs, _ := e.d.LoopDevices(); len(devs) != 1 {
		t.Errorf("LoopDevices = %v, want one", devs)
	}

	if got := execOK(t, c, "hostname"); got != "sandbox-"+s.id {
		t.Errorf("hostname = %q", got)
	}
	if got := execOK(t, c, "id", "-u"); got != "0" {
		t.Errorf("id -u = %q, want 0", got)
	}
	resolv := execOK(t, c, "cat", "/etc/resolv.conf")
	for _, dns := range testDNS {
		if !strings.Contains(resolv, "nameserver "+dns) {
			t.Errorf("resolv.conf lacks %s:\n%s", dns, resolv)
		}
	}
	if hosts := execOK(t, c, "cat", "/etc/hosts"); !strings.Contains(hosts, s.inst.IP+"\tsandbox-"+s.id) {
		t.Errorf("/etc/hosts does not map the sandbox's name to %s:\n%s", s.inst.IP, hosts)
	}
	// The network driver's namespace: eth0 carries the lease, and the
	// bridge (gateway) answers.
	if addr := execOK(t, c, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(addr, s.inst.IP+"/24") {
		t.Errorf("eth0 lacks %s:\n%s", s.inst.IP, addr)
	}
	// Every user pings over ICMP datagram sockets (ping_group_range): the
	// guest's root has no raw sockets in a namespace the host owns.
	installProbe(t, c)
	execOK(t, c, "probe", "ping", s.inst.Gateway)
	if r, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"probe", "ping", s.inst.Gateway}, User: "dev"}); err != nil || r.ExitCode != 0 {
		t.Errorf("ping as dev: %+v, %v", r, err)
	}
	// The guest's sysfs is its own network namespace's.
	if ls := execOK(t, c, "ls", "/sys/class/net"); ls != "eth0\nlo" {
		t.Errorf("/sys/class/net holds %q, want eth0 and lo", ls)
	}
	// The socket dir is the only host directory the guest sees.
	if ls := execOK(t, c, "ls", "/run/atelier"); ls != "agent.sock" {
		t.Errorf("/run/atelier holds %q, want only agent.sock", ls)
	}
	// ... and a small tmpfs: the guest cannot fill the host's disk there.
	fill, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"busybox", "dd", "if=/dev/zero", "of=/run/atelier/fill", "bs=1024", "count=4096"}})
	if err != nil || fill.ExitCode == 0 || !strings.Contains(fill.Stderr, "No space left") {
		t.Errorf("writing 4 MB into /run/atelier: %+v, %v; want ENOSPC", fill, err)
	}
	execOK(t, c, "rm", "/run/atelier/fill")
	checkLimits(t, e.d, c, 2, 300)

	const note = "written before stop\n"
	if _, err := c.WriteFile(ctx, "/root/note.txt", strings.NewReader(note), agent.WriteFileOptions{}); err != nil {
		t.Fatalf("write file: %v", err)
	}
	if b, err := c.ReadFileBytes(ctx, "/root/note.txt"); err != nil || string(b) != note {
		t.Fatalf("read back = %q, %v", b, err)
	}

	// Pause freezes the guest; it still counts as alive.
	if err := e.d.Pause(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.d.state(ctx, s.id); st.Status != statusPaused {
		t.Errorf("status after Pause = %s", st.Status)
	}
	if alive, _ := e.d.Alive(ctx, s.id); !alive {
		t.Error("a paused sandbox is reported dead")
	}
	if err := e.d.Pause(ctx, s.id); err != nil {
		t.Errorf("second Pause: %v", err)
	}
	if err := e.d.Resume(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	execOK(t, c, "true")

	if err := e.d.Boot(ctx, s.inst); !errors.Is(err, ErrRunning) {
		t.Errorf("Boot of a running sandbox: %v, want ErrRunning", err)
	}
	execOK(t, c, "true") // the failed Boot touched nothing

	// Stop: container, mount and loop device gone; volume, log and socket
	// dir kept.
	if err := e.d.Stop(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if left := e.leftovers(s.id, s.inst.Disk); len(left) > 0 {
		t.Errorf("after Stop: %v", left)
	}
	if procs := e.pidNSProcesses(); len(procs) > 0 {
		t.Errorf("processes left after Stop: %v", procs)
	}
	if alive, err := e.d.Alive(ctx, s.id); err != nil || alive {
		t.Errorf("Alive after Stop = %v, %v", alive, err)
	}
	if ids, _ := e.d.List(ctx); len(ids) != 0 {
		t.Errorf("List after Stop = %v", ids)
	}
	for _, p := range []string{e.d.socketDir(s.id), e.d.LogPath(s.id), s.inst.Disk} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Stop removed %s: %v", p, err)
		}
	}
	if _, err := os.Stat(e.d.AgentSocket(s.id)); !os.IsNotExist(err) {
		t.Errorf("stale agent socket kept after Stop: %v", err)
	}
	if err := e.d.Stop(ctx, s.id); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	// The volume holds the file without any mount.
	out, err := exec.Command("debugfs", "-R", "cat /root/note.txt", s.inst.Disk).Output()
	if err != nil || string(out) != note {
		t.Errorf("volume after Stop: /root/note.txt = %q, %v", out, err)
	}

	// Boot again: the file is still there, through the guest.
	c2 := e.boot(s)
	if b, err := c2.ReadFileBytes(ctx, "/root/note.txt"); err != nil || string(b) != note {
		t.Errorf("after reboot: /root/note.txt = %q, %v", b, err)
	}

	// Destroy: nothing left at all, and again is success.
	if err := e.d.Destroy(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if left := e.leftovers(s.id, s.inst.Disk); len(left) > 0 {
		t.Errorf("after Destroy: %v", left)
	}
	for _, p := range []string{e.d.socketDir(s.id), e.d.LogPath(s.id)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("Destroy kept %s: %v", p, err)
		}
	}
	if procs := e.pidNSProcesses(); len(procs) > 0 {
		t.Errorf("processes left after Destroy: %v", procs)
	}
	if out, err := exec.Command(e.d.runc, "--root", e.d.opts.StateDir, "list", "-q").Output(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("runc list after Destroy: %q, %v", out, err)
	}
	if _, err := os.Stat(s.inst.Disk); err != nil {
		t.Errorf("Destroy removed the volume (the storage driver's): %v", err)
	}
	if err := e.d.Destroy(ctx, s.id); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
	if err := e.d.Stop(ctx, s.id); err != nil {
		t.Errorf("Stop after Destroy: %v", err)
	}
}

// checkLimits reads the container's own cgroup files (it has a cgroup
// namespace and /sys/fs/cgroup mounted) for the limits the host supports.
func checkLimits(t *testing.T, d *Driver, c *agent.Client, vcpus, memoryMB int) {
	t.Helper()
	cpu, memory, pids := d.Cgroups()
	read := func(paths ...string) (string, string) {
		for _, p := range paths {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"cat", p}})
			cancel()
			if err == nil && r.ExitCode == 0 {
				return p, strings.TrimSpace(r.Stdout)
			}
		}
		return "", ""
	}
	if cpu {
		switch p, v := read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"); {
		case p == "":
			t.Error("no CPU quota file visible in the guest")
		case strings.HasSuffix(p, "cpu.max") && v != fmt.Sprintf("%d %d", vcpus*cpuPeriod, cpuPeriod):
			t.Errorf("%s = %q, want %d vcpus", p, v, vcpus)
		case strings.HasSuffix(p, "cfs_quota_us") && v != strconv.Itoa(vcpus*cpuPeriod):
			t.Errorf("%s = %q, want %d", p, v, vcpus*cpuPeriod)
		}
	} else {
		t.Log("host has no CPU controller: no CPU limit applied")
	}
	if memory {
		p, v := read("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
		if p == "" || v != strconv.Itoa(memoryMB<<20) {
			t.Errorf("memory limit %s = %q, want %d", p, v, memoryMB<<20)
		}
	} else {
		t.Log("host has no memory controller: no memory limit applied")
	}
	if pids {
		p, v := read("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max")
		if p == "" || v != strconv.Itoa(pidsLimit) {
			t.Errorf("pids limit %s = %q, want %d", p, v, pidsLimit)
		}
	}
}

// A failed Boot leaves no mount, loop device, bundle or container.
func TestBootFailures(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	tests := []struct {
		name  string
		setup func(t *testing.T, s *sbx) func()
		want  string
	}{
		{"missing netns", func(t *testing.T, s *sbx) func() {
			run(t, "ip", "netns", "del", e.prefix+"g-"+s.id)
			return nil
		}, "network namespace"},
		{"stale netns file", func(t *testing.T, s *sbx) func() {
			path := "/var/run/netns/" + e.prefix + "g-" + s.id
			run(t, "ip", "netns", "del", e.prefix+"g-"+s.id)
			if err := os.WriteFile(path, nil, 0o444); err != nil {
				t.Fatal(err)
			}
			return func() { os.Remove(path) }
		}, "not a network namespace"},
		{"agent missing from image", func(t *testing.T, s *sbx) func() {
			old := e.d.opts.AgentPath
			e.d.opts.AgentPath = "/sbin/no-such-agent"
			return func() { e.d.opts.AgentPath = old }
		}, "no-such-agent"},
		{"volume not ext4", func(t *testing.T, s *sbx) func() {
			if err := os.Truncate(s.inst.Disk, 0); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(s.inst.Disk, 16<<20); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "mount volume"},
		{"volume in use", func(t *testing.T, s *sbx) func() {
			dev, f, err := loopdev.Attach(s.inst.Disk, false)
			if err != nil {
				t.Fatal(err)
			}
			return func() {
				f.Close() // autoclear frees the device
				if err := detachLoop(ctx, dev); err != nil {
					t.Error(err)
				}
			}
		}, "in use by /dev/loop"},
		{"bad dns", func(t *testing.T, s *sbx) func() {
			s.inst.DNS = []string{"8.8.8.8; rm -rf /"}
			return nil
		}, "dns server"},
		{"missing volume", func(t *testing.T, s *sbx) func() {
			s.inst.Disk = filepath.Join(e.dir, "nope.ext4")
			return nil
		}, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.newSandbox()
			undo := tc.setup(t, s)
			err := e.d.Boot(ctx, s.inst)
			if undo != nil {
				undo()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Boot: %v, want an error containing %q", err, tc.want)
			}
			if left := e.leftovers(s.id, s.inst.Disk); len(left) > 0 {
				t.Errorf("failed Boot left %v", left)
			}
			if alive, _ := e.d.Alive(ctx, s.id); alive {
				t.Error("failed Boot left a running container")
			}
		})
	}
}

// A new Driver (a restarted manager) finds and controls the containers the
// old one started, a guest that died on its own is cleaned up by the next
// Boot, and Stop kills a guest that outlives its grace period.
func TestRestartAndCrashedGuest(t *testing.T) {
	e := newEnv(t, false)
	s := e.newSandbox()
	ctx := context.Background()
	e.boot(s)

	d2, err := New(e.d.opts)
	if err != nil {
		t.Fatal(err)
	}
	if alive, err := d2.Alive(ctx, s.id); err != nil || !alive {
		t.Fatalf("new driver: Alive = %v, %v", alive, err)
	}
	if ids, _ := d2.List(ctx); !slices.Equal(ids, []string{s.id}) {
		t.Errorf("new driver: List = %v", ids)
	}
	if devs, _ := d2.LoopDevices(); len(devs) != 1 {
		t.Errorf("new driver: LoopDevices = %v", devs)
	}

	// The guest dies behind the driver's back: runc says stopped, the
	// volume is still mounted.
	run(t, e.d.runc, "--root", e.d.opts.StateDir, "kill", containerName(s.id), "KILL")
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := d2.state(ctx, s.id)
		if err == nil && st.Status == statusStopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not stopped after SIGKILL: %+v %v", st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if alive, _ := d2.Alive(ctx, s.id); alive {
		t.Error("a stopped container is reported alive")
	}
	if ms, _ := d2.Mounts(); len(ms) != 3 {
		t.Errorf("expected the dead guest's rootfs, sysfs and socket dir still mounted, got %v", ms)
	}
	// Boot clears the remains and starts afresh.
	if err := d2.Boot(ctx, s.inst); err != nil {
		t.Fatalf("boot over a dead guest: %v\n%s", err, e.log(s.id))
	}
	e.recordPidNS(s.id)
	c := e.connect(s)
	execOK(t, c, "true")

	// A guest that outlives the grace period is killed: a grace too short
	// for any guest takes that path.
	opts := e.d.opts
	opts.StopTimeout = time.Nanosecond
	impatient, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := impatient.Stop(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if left := e.leftovers(s.id, s.inst.Disk); len(left) > 0 {
		t.Errorf("after Stop with SIGKILL: %v", left)
	}
	if procs := e.pidNSProcesses(); len(procs) > 0 {
		t.Errorf("processes left after Stop with SIGKILL: %v", procs)
	}
	if err := d2.Destroy(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.d.socketDir(s.id)); !os.IsNotExist(err) {
		t.Errorf("Destroy after Stop kept the socket dir: %v", err)
	}
}

func TestConcurrentBoots(t *testing.T) {
	const n = 5
	e := newEnv(t, true)
	ctx := context.Background()
	var sbxs []*sbx
	for i := 0; i < n; i++ {
		sbxs = append(sbxs, e.newSandbox())
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range sbxs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = bootAndCheck(ctx, e, s)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("sandbox %s: %v\nlog:\n%s", sbxs[i].id, err, e.log(sbxs[i].id))
		}
	}
	if ids, _ := e.d.List(ctx); len(ids) != n {
		t.Errorf("List = %v, want %d sandboxes", ids, n)
	}
	if devs, _ := e.d.LoopDevices(); len(devs) != n {
		t.Errorf("LoopDevices = %v, want %d distinct devices", devs, n)
	}
	for i, s := range sbxs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.d.Destroy(ctx, s.id)
		}()
	}
	wg.Wait()
	for i, s := range sbxs {
		if errs[i] != nil {
			t.Errorf("destroy %s: %v", s.id, errs[i])
		}
		if left := e.leftovers(s.id, s.inst.Disk); len(left) > 0 {
			t.Errorf("%s after Destroy: %v", s.id, left)
		}
	}
	if procs := e.pidNSProcesses(); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
}

// bootAndCheck boots s, waits for its agent and checks its identity and
// address; it reports instead of failing, for use from goroutines.
func bootAndCheck(ctx context.Context, e *env, s *sbx) error {
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.d.Boot(bctx, s.inst); err != nil {
		return err
	}
	st, err := e.d.state(ctx, s.id)
	if err != nil {
		return err
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", st.Pid))
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.pidNS = append(e.pidNS, ns)
	e.mu.Unlock()
	c := agent.New(agent.UnixDialer(e.d.AgentSocket(s.id)))
	defer c.Close()
	if err := c.WaitReady(bctx, 5*time.Millisecond); err != nil {
		return err
	}
	r, err := c.Exec(bctx, agent.ExecRequest{Shell: "hostname; ip -4 -o addr show eth0"})
	if err != nil {
		return err
	}
	if r.ExitCode != 0 || !strings.HasPrefix(r.Stdout, "sandbox-"+s.id+"\n") || !strings.Contains(r.Stdout, s.inst.IP+"/24") {
		return fmt.Errorf("guest identity: exit %d, %q", r.ExitCode, r.Stdout)
	}
	return nil
}
