package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// mountsAt lists the mountinfo lines of this process's mount namespace
// whose mount point is path, with their optional fields (shared:N, ...).
// A read of mountinfo is not atomic and can miss lines while other tests
// mount and unmount on the host, so it reads until two reads agree.
func mountsAt(t testing.TB, path string) []string {
	t.Helper()
	read := func() []string {
		b, err := os.ReadFile("/proc/self/mountinfo")
		must(t, err)
		var out []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 6 && f[4] == path {
				out = append(out, line)
			}
		}
		return out
	}
	prev := read()
	for range 20 {
		cur := read()
		if slices.Equal(cur, prev) {
			return cur
		}
		prev = cur
	}
	t.Fatalf("mountinfo for %s does not settle", path)
	return nil
}

// netnsTestDir is a directory of its own for named namespaces, unmounted and
// removed at cleanup: these tests re-bind it the way `ip netns add` does,
// which they must never do to the host's /var/run/netns.
func netnsTestDir(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "netns")
	t.Cleanup(func() {
		for range maxStacked {
			if unix.Unmount(dir, unix.MNT_DETACH) != nil {
				break
			}
		}
	})
	return dir
}

// The CI failure: `ip netns add` in another package's test found
// /var/run/netns a plain directory and bind-mounted it onto itself
// (MS_BIND|MS_REC). Namespace files mounted before then got a visible copy
// on top and kept a hidden original, so unmount + unlink failed with EBUSY
// and the namespace leaked. The same happens in production when CNI or an
// operator's `ip netns add` runs for the first time after Atelier created a
// sandbox's namespace.
func TestDeleteNamedNetnsUnderARebind(t *testing.T) {
	dir := netnsTestDir(t)
	must(t, os.MkdirAll(dir, 0o755))
	old := filepath.Join(dir, "made-before")
	// As an Atelier without ensureNetnsDir left it, or one that lost the
	// race against another tool's first `ip netns add`.
	must(t, onSwitchedThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) },
		func() error { return pinCurrentNetns(old) }))
	must(t, unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""))
	if n := len(mountsAt(t, old)); n != 2 {
		t.Fatalf("setup: %d mounts at %s, want the visible copy and the hidden original", n, old)
	}
	if h, err := openNamedNetns(old); err != nil {
		t.Fatalf("the namespace must still open through the copy: %v", err)
	} else {
		h.Close()
	}

	if err := deleteNamedNetns(old); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := os.Lstat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file still there: %v", err)
	}
	if m := mountsAt(t, old); len(m) != 0 {
		t.Errorf("mounts left at %s: %q", old, m)
	}
	if err := deleteNamedNetns(old); err != nil {
		t.Errorf("second delete: %v", err)
	}
}

// After createNamedNetns the directory is a shared mount point of its own,
// so `ip netns add` (which only binds a directory that is not a mount point)
// has nothing to re-bind, and a namespace made now is deleted cleanly.
func TestCreateNamedNetnsMakesItsDirAMountPoint(t *testing.T) {
	dir := netnsTestDir(t)
	p := filepath.Join(dir, "a")
	must(t, createNamedNetns(p))
	m := mountsAt(t, dir)
	if len(m) != 1 || !strings.Contains(m[0], " shared:") {
		t.Fatalf("netns dir mounts %q, want one shared bind", m)
	}
	// What iproute2 tries first; it re-binds only when this fails.
	must(t, unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""))
	must(t, createNamedNetns(filepath.Join(dir, "b")))
	if m := mountsAt(t, dir); len(m) != 1 {
		t.Errorf("a second create stacked another bind: %q", m)
	}
	for _, n := range []string{"a", "b"} {
		if err := deleteNamedNetns(filepath.Join(dir, n)); err != nil {
			t.Errorf("delete %s: %v", n, err)
		}
		if m := mountsAt(t, filepath.Join(dir, n)); len(m) != 0 {
			t.Errorf("mounts left at %s: %q", n, m)
		}
	}
}

// The fallback unshares a mount namespace on a thread of its own. Run on the
// main thread, which Go never terminates, it left the whole process's
// /proc/self (the main thread's view) in that private namespace, and mount
// checks that read /proc/self/mountinfo went wrong for good.
func TestUnlinkFallbackKeepsTheProcessMountNamespace(t *testing.T) {
	dir := netnsTestDir(t)
	must(t, os.MkdirAll(dir, 0o755))
	before, err := os.Readlink("/proc/self/ns/mnt")
	must(t, err)
	for i := range 40 {
		p := filepath.Join(dir, fmt.Sprint("ns", i))
		must(t, onSwitchedThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) },
			func() error { return pinCurrentNetns(p) }))
		must(t, unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""))
		if err := deleteNamedNetns(p); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
		if after, err := os.Readlink("/proc/self/ns/mnt"); err != nil || after != before {
			t.Fatalf("after %d fallbacks the process's mount namespace is %s, was %s (%v)", i+1, after, before, err)
		}
	}
	var tids sync.Map
	for range 200 {
		must(t, onThrowawayThread(func() error {
			tids.Store(unix.Gettid(), true)
			return nil
		}))
	}
	if _, ok := tids.Load(unix.Getpid()); ok {
		t.Error("onThrowawayThread ran on the main thread")
	}
}
