package kubetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const cgroupFS = "/sys/fs/cgroup"

// cgroupHierarchies lists the mounted hierarchies: the v1 controllers and
// the unified one on a hybrid host, or just cgroupFS on a pure v2 host.
func cgroupHierarchies() ([]string, error) {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS}, nil
	}
	ents, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, fmt.Errorf("list cgroup hierarchies: %w", err)
	}
	var hs []string
	for _, e := range ents {
		if e.IsDir() { // skips the cpu,cpuacct style symlinks
			hs = append(hs, filepath.Join(cgroupFS, e.Name()))
		}
	}
	return hs, nil
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy (the
// kubelet refuses a root that is missing in one).
func makeCgroupRoot(root string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, root)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		// A new v1 cpuset is empty and takes no task until given CPUs and nodes.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				continue
			}
			v, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				return fmt.Errorf("read %s: %w", f, err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", filepath.Join(dir, f), err)
			}
		}
		if h == cgroupFS {
			// Pure v2: hand the controllers down to the kubelet's subtree.
			for _, ctl := range []string{"cpu", "cpuset", "memory", "pids", "io", "hugetlb"} {
				_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0o644)
			}
		}
	}
	return nil
}

// cgroupDirs lists root and every cgroup below it in every hierarchy,
// deepest first.
func cgroupDirs(root string) []string {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil
	}
	var dirs []string
	for _, h := range hs {
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	return dirs
}

// killCgroupTree SIGKILLs every process in root's cgroups (the pods'
// containers) until none is left.
func killCgroupTree(root string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var pids []int
		for _, d := range cgroupDirs(root) {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s survive SIGKILL", pids, root)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroupRoot removes root's cgroups bottom-up. A cgroup whose last
// task just died can stay busy for a moment, hence the retries.
func removeCgroupRoot(root string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var busy []string
		for _, d := range cgroupDirs(root) {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				busy = append(busy, fmt.Sprintf("%s: %v", d, err))
			}
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroups: %s", strings.Join(busy, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kubeletSysctls are the kernel tunables the kubelet sets at start
// (setupKernelTunables in pkg/kubelet/cm) unless protectKernelDefaults
// makes it refuse to run on other values.
var kubeletSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// The machine-wide record of the tunables' values before the first bed's
// kubelet changed them, and of the processes running beds. Beds in several
// test binaries overlap, so the values are taken by the first and written
// back by the last; a process that died without stopping its bed is
// dropped from the list when the next one looks.
var (
	sysctlLockPath  = "/run/atelier-kubetest.lock"
	sysctlStatePath = "/run/atelier-kubetest.json"
)

type sysctlState struct {
	Values map[string]string `json:"values"`
	Users  []sysctlUser      `json:"users"`
}

type sysctlUser struct {
	PID   int    `json:"pid"`
	Start string `json:"start"` // /proc/PID/stat start time, so a reused PID does not count
	Bed   string `json:"bed"`
}

type sysctlLease struct{ user sysctlUser }

func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 of stat, the start time in clock ticks
}

// lockSysctls takes the machine-wide lock. A lock file unlinked by the last
// bed between our open and our flock is not the lock any more: retry.
func lockSysctls() (*os.File, error) {
	for {
		f, err := os.OpenFile(sysctlLockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", sysctlLockPath, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", sysctlLockPath, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(sysctlLockPath, &now) == nil && held.Ino == now.Ino {
			return f, nil
		}
		f.Close()
	}
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func loadSysctlState() (*sysctlState, error) {
	b, err := os.ReadFile(sysctlStatePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sysctlStatePath, err)
	}
	var st sysctlState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", sysctlStatePath, err)
	}
	live := st.Users[:0]
	for _, u := range st.Users {
		if procStart(u.PID) == u.Start {
			live = append(live, u)
		}
	}
	st.Users = live
	return &st, nil
}

func saveSysctlState(st *sysctlState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode sysctl state: %w", err)
	}
	tmp := sysctlStatePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write sysctl state: %w", err)
	}
	if err := os.Rename(tmp, sysctlStatePath); err != nil {
		return fmt.Errorf("write sysctl state: %w", err)
	}
	return nil
}

// acquireSysctls records the tunables (when no other bed runs) and this bed
// as a user of the record.
func acquireSysctls() (*sysctlLease, error) {
	lock, err := lockSysctls()
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	st, err := loadSysctlState()
	if err != nil {
		return nil, err
	}
	// A record left by a run that died keeps the host's values from before
	// it, so it is reused; only with no record are the current values the
	// host's own.
	if st == nil {
		st = &sysctlState{Values: map[string]string{}}
		for _, n := range kubeletSysctls {
			v, err := readSysctl(n)
			if err != nil {
				return nil, err
			}
			st.Values[n] = v
		}
	}
	l := &sysctlLease{user: sysctlUser{PID: os.Getpid(), Start: procStart(os.Getpid()), Bed: randHex(4)}}
	st.Users = append(st.Users, l.user)
	if err := saveSysctlState(st); err != nil {
		return nil, err
	}
	return l, nil
}

// release drops this bed from the record; the last bed writes the values
// back and removes the record and the lock file.
func (l *sysctlLease) release() error {
	lock, err := lockSysctls()
	if err != nil {
		return err
	}
	defer lock.Close()
	st, err := loadSysctlState()
	if err != nil || st == nil {
		return err
	}
	users := st.Users[:0]
	for _, u := range st.Users {
		if u != l.user {
			users = append(users, u)
		}
	}
	st.Users = users
	if len(users) > 0 {
		return saveSysctlState(st)
	}
	var errs []error
	for _, n := range kubeletSysctls {
		want, ok := st.Values[n]
		if !ok {
			continue
		}
		if cur, err := readSysctl(n); err == nil && cur == want {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", n), []byte(want), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", n, want, err))
		}
	}
	if len(errs) > 0 {
		// Keep the record, so a later bed's release tries again.
		return errors.Join(append(errs, saveSysctlState(st))...)
	}
	if err := os.Remove(sysctlStatePath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove sysctl state: %w", err))
	}
	if err := os.Remove(sysctlLockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove sysctl lock: %w", err))
	}
	return errors.Join(errs...)
}
