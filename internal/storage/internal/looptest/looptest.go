// Package looptest gives storage tests real filesystems: a sparse file on a
// loop device, formatted and mounted in a temp dir, and removed again with
// a check that no loop device or mount is left behind. Root only.
package looptest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Root skips the test unless it runs as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches loop devices and mounts filesystems (CI runs as root)")
	}
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Mount makes a sparse file of size bytes, attaches it to a loop device,
// formats it as fstype ("xfs" with reflink, or "ext4") and mounts it. It
// returns the mount point; cleanup undoes everything and fails the test if
// a loop device or mount remains.
func Mount(t testing.TB, fstype string, size int64) string {
	t.Helper()
	Root(t)
	var mkfs []string
	switch fstype {
	case "xfs":
		mkfs = []string{"/usr/sbin/mkfs.xfs", "-q", "-f", "-m", "reflink=1"}
	case "ext4":
		mkfs = []string{"/usr/sbin/mkfs.ext4", "-q", "-F"}
	default:
		t.Fatalf("looptest: unknown filesystem %q", fstype)
	}
	if _, err := os.Stat(mkfs[0]); err != nil {
		t.Fatalf("looptest: %s missing; install xfsprogs/e2fsprogs (apt-get install xfsprogs)", mkfs[0])
	}
	dir := t.TempDir()
	backing := filepath.Join(dir, "pool.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	dev := attachSparse(t, backing, size)
	mounted := false
	t.Cleanup(func() {
		if mounted {
			if err := Unmount(mnt); err != nil {
				t.Errorf("looptest: %v", err)
			}
		}
		if _, err := run("/usr/sbin/losetup", "-d", dev); err != nil {
			t.Errorf("looptest: %v", err)
		}
		if err := CheckGone(backing, mnt); err != nil {
			t.Errorf("looptest: %v", err)
		}
	})
	if _, err := run(mkfs[0], append(mkfs[1:], dev)...); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, fstype, 0, ""); err != nil {
		t.Fatalf("mount %s on %s: %v", dev, mnt, err)
	}
	mounted = true
	return mnt
}

// Attach makes a sparse file of size bytes and attaches it to a loop
// device, unformatted; cleanup detaches it and checks it is gone.
func Attach(t testing.TB, size int64) string {
	t.Helper()
	Root(t)
	backing := filepath.Join(t.TempDir(), "disk.img")
	dev := attachSparse(t, backing, size)
	t.Cleanup(func() {
		if _, err := run("/usr/sbin/losetup", "-d", dev); err != nil {
			t.Errorf("looptest: %v", err)
		}
		if err := CheckGone(backing, ""); err != nil {
			t.Errorf("looptest: %v", err)
		}
	})
	return dev
}

// attachSparse makes backing a sparse file of size bytes and attaches it
// to a free loop device; the caller detaches it.
func attachSparse(t testing.TB, backing string, size int64) string {
	t.Helper()
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err := run("/usr/sbin/losetup", "--find", "--show", backing)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// MountSource is the device mounted at mnt, "" when nothing is.
func MountSource(mnt string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[1] == mnt {
			return f[0]
		}
	}
	return ""
}

// Tmpfs mounts a tmpfs of size (e.g. "256m") in a temp dir: a filesystem
// without reflink but with SEEK_DATA/SEEK_HOLE.
func Tmpfs(t testing.TB, size string) string {
	t.Helper()
	Root(t)
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := Unmount(mnt); err != nil {
			t.Errorf("looptest: %v", err)
		}
		if err := CheckGone("", mnt); err != nil {
			t.Errorf("looptest: %v", err)
		}
	})
	return mnt
}

// Unmount unmounts mnt, retrying briefly while it is busy (a file closed a
// moment ago may still hold it).
func Unmount(mnt string) error {
	var err error
	for range 50 {
		if err = unix.Unmount(mnt, 0); err == nil || err == unix.EINVAL || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("unmount %s: %w", mnt, err)
}

// CheckGone fails when backing is still attached to a loop device or
// anything is mounted at or under mnt.
func CheckGone(backing, mnt string) error {
	if backing != "" {
		// Detaching is asynchronous for a device still being released.
		var out string
		for range 50 {
			var err error
			if out, err = run("/usr/sbin/losetup", "-j", backing); err != nil {
				return err
			}
			if strings.TrimSpace(out) == "" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("loop device left attached: %s", strings.TrimSpace(out))
		}
	}
	if mnt == "" {
		return nil
	}
	if m := MountsUnder(mnt); len(m) > 0 {
		return fmt.Errorf("mounts left: %v", m)
	}
	return nil
}

// MountsUnder lists the mount points at or below dir.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return []string{"cannot read /proc/self/mounts: " + err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		// /proc/mounts escapes spaces as \040; temp dirs have none.
		if p := fields[1]; p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}
