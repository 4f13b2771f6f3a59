package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FilledMarker is written last into a disk copy-rootfs filled, so a copy
// cut short is never taken for a whole disk.
const FilledMarker = ".atelier-filled"

// copyRootfsMain fills a new sandbox disk from the image a pod runs: the
// kubernetes runtime's fill pod mounts the empty volume at DEST and runs
// the image's own agent, so no tool of the image (cp, tar) is needed.
func copyRootfsMain(args []string) int {
	if len(args) != 1 || !filepath.IsAbs(args[0]) {
		fmt.Fprintln(os.Stderr, "usage: atelier-agent copy-rootfs DEST (an absolute path)")
		return 2
	}
	if err := CopyRootfs("/", args[0]); err != nil {
		fmt.Fprintln(os.Stderr, "copy-rootfs:", err)
		return 1
	}
	return 0
}

// CopyRootfs copies the tree at src into dst, keeping owners, modes, times
// and symlinks, and staying on src's file system: /proc, /sys, /dev, the
// runtime's bind mounts and dst itself (a volume mounted below src) are
// left out. Hard links become separate copies; extended attributes (file
// capabilities) are not copied. The marker is written last.
func CopyRootfs(src, dst string) error {
	var root unix.Stat_t
	if err := unix.Lstat(src, &root); err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	var dirs []struct {
		path string
		st   *syscall.Stat_t
	}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if p == dst {
			return filepath.SkipDir
		}
		if rel == FilledMarker {
			return nil // the source's own marker: written fresh below
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() && p != src && uint64(st.Dev) != root.Dev {
			// Another file system: keep its mount point, not its content.
			if err := os.MkdirAll(target, info.Mode().Perm()); err != nil {
				return err
			}
			return filepath.SkipDir
		}
		switch {
		case d.IsDir():
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			// Modes and times of directories last, once their content is in.
			dirs = append(dirs, struct {
				path string
				st   *syscall.Stat_t
			}{target, st})
			return nil
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			_ = os.Remove(target)
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if uint64(st.Dev) != root.Dev {
				return nil // a bind-mounted file (/etc/hosts and the like)
			}
			if err := copyRegular(p, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			// Device nodes, fifos and sockets: recreated as they were.
			_ = os.Remove(target)
			if err := unix.Mknod(target, uint32(st.Mode), int(st.Rdev)); err != nil {
				return fmt.Errorf("mknod %s: %w", target, err)
			}
		}
		return setMeta(target, st, info.Mode())
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := setMeta(dirs[i].path, dirs[i].st, fs.ModeDir|fs.FileMode(dirs[i].st.Mode&0o7777)); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(filepath.Join(dst, FilledMarker), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, time.Now().UTC().Format(time.RFC3339)+"\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyRegular(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setMeta gives target src's owner, mode (setuid bits included, after the
// chown that would clear them) and times.
func setMeta(target string, st *syscall.Stat_t, mode fs.FileMode) error {
	if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, syscall.EPERM) {
		return err
	}
	ts := []unix.Timespec{{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec}, {Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}}
	if mode&fs.ModeSymlink != 0 {
		return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err := unix.Chmod(target, uint32(st.Mode&0o7777)); err != nil {
		return err
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, 0)
}
