package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Stats counts what Flatten wrote and left out.
type Stats struct {
	Layers  int
	Entries int
	// Bytes is the size of the regular files written.
	Bytes int64
	// Whiteouts are deletions applied from upper layers.
	Whiteouts int
	// Skipped are device nodes and FIFOs: the runtime provides /dev, and
	// mkfs.ext4 -d is not given nodes made by hand.
	Skipped int
	// Xattrs are extended attributes kept (file capabilities among them).
	Xattrs int
}

// whiteout prefixes of the OCI layer format.
const (
	whPrefix = ".wh."
	whOpaque = ".wh..wh..opq"
	// whMeta is the prefix of the format's other metadata entries (aufs
	// hard-link directories): never part of the tree.
	whMeta = ".wh..wh."
)

// keptXattr reports whether an extended attribute from a layer is written:
// file capabilities (ping, and the like) and user attributes. SELinux labels
// and trusted.* (overlayfs' own) mean nothing in a sandbox, or something
// only the host should set.
func keptXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.")
}

// cleanName turns a tar entry name into a path relative to the root, or
// refuses it: an absolute name is taken as rooted, and a ".." component is
// an error rather than something to clean away, because an image that
// carries one was made to write outside its tree.
func cleanName(name string) (string, error) {
	n := strings.TrimPrefix(name, "./")
	n = strings.TrimLeft(n, "/")
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q climbs out of the image's tree", name)
		}
	}
	n = path.Clean(n)
	if n == "." || n == "" {
		return ".", nil
	}
	return n, nil
}

// Flatten applies the image's layers in order onto the empty directory dir,
// honouring whiteouts, and returns what it wrote. Every file operation goes
// through an os.Root on dir: no entry name, hard-link target or symbolic
// link (in this layer or a lower one) can make it read or write outside
// dir; such an entry fails the whole flatten.
func Flatten(ctx context.Context, img v1.Image, dir string) (Stats, error) {
	var st Stats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, fmt.Errorf("flatten: %w", err)
	}
	defer root.Close()
	layers, err := img.Layers()
	if err != nil {
		return st, fmt.Errorf("flatten: read layers: %w", err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return st, fmt.Errorf("flatten: layer %d: %w", i+1, err)
		}
		err = applyLayer(ctx, root, tar.NewReader(rc), &st)
		rc.Close()
		if err != nil {
			return st, fmt.Errorf("flatten: layer %d of %d: %w", i+1, len(layers), err)
		}
		st.Layers++
	}
	return st, nil
}

// applyLayer extracts one layer. written holds the paths this layer made,
// which an opaque whiteout in the same layer must keep.
func applyLayer(ctx context.Context, root *os.Root, tr *tar.Reader, st *Stats) error {
	written := map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		dir, base := path.Split(name)
		dir = path.Clean(dir)
		if dir == "" {
			dir = "."
		}
		switch {
		case base == whOpaque:
			if err := opaque(root, dir, written); err != nil {
				return fmt.Errorf("opaque whiteout %q: %w", hdr.Name, err)
			}
			st.Whiteouts++
			continue
		case strings.HasPrefix(base, whMeta):
			continue
		case strings.HasPrefix(base, whPrefix):
			target := path.Join(dir, strings.TrimPrefix(base, whPrefix))
			if err := root.RemoveAll(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("whiteout %q: %w", hdr.Name, err)
			}
			st.Whiteouts++
			continue
		}
		if name == "." {
			if hdr.Typeflag == tar.TypeDir {
				if err := setMeta(root, ".", hdr, st); err != nil {
					return err
				}
			}
			continue
		}
		if dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("entry %q: make parent: %w", hdr.Name, err)
			}
		}
		if err := writeEntry(root, name, hdr, tr, st); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		written[name] = true
		st.Entries++
	}
}

// opaque empties dir of everything lower layers put there.
func opaque(root *os.Root, dir string, written map[string]bool) error {
	f, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if written[p] {
			continue
		}
		if err := root.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// clear removes whatever is at name unless it is a directory and keepDir.
func clear(root *os.Root, name string, keepDir bool) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		if keepDir {
			return nil
		}
		return root.RemoveAll(name)
	}
	return root.Remove(name)
}

func writeEntry(root *os.Root, name string, hdr *tar.Header, r io.Reader, st *Stats) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := clear(root, name, true); err != nil {
			return err
		}
		if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return setMeta(root, name, hdr, st)
	case tar.TypeReg, tar.TypeRegA:
		if err := clear(root, name, false); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		n, err := io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		st.Bytes += n
		return setMeta(root, name, hdr, st)
	case tar.TypeSymlink:
		if err := clear(root, name, false); err != nil {
			return err
		}
		// The link is stored as the image has it; os.Root refuses to
		// follow it out of the tree when a later entry writes through it.
		if err := root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		return root.Lchown(name, hdr.Uid, hdr.Gid)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := clear(root, name, false); err != nil {
			return err
		}
		return root.Link(target, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		st.Skipped++
		return nil
	default:
		// PAX and GNU headers are consumed by archive/tar; anything else
		// (sparse, unknown) is not a file of the tree.
		st.Skipped++
		return nil
	}
}

// setMeta sets owner, then mode (chown clears setuid bits), then extended
// attributes (chown clears file capabilities too), then times.
func setMeta(root *os.Root, name string, hdr *tar.Header, st *Stats) error {
	if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if err := root.Chmod(name, hdr.FileInfo().Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	if hasXattrs(hdr) {
		f, err := root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		err = setXattrs(f, hdr, st)
		f.Close()
		if err != nil {
			return err
		}
	}
	if !hdr.ModTime.IsZero() {
		_ = root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	return nil
}

func hasXattrs(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			return true
		}
	}
	return false
}

// setXattrs writes the entry's kept extended attributes on the open file.
func setXattrs(f *os.File, hdr *tar.Header, st *Stats) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !keptXattr(name) {
			continue
		}
		if err := unix.Fsetxattr(int(f.Fd()), name, []byte(v), 0); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		st.Xattrs++
	}
	return nil
}
