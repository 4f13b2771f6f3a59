// Package ext4img reads and writes ext4 image files with e2fsprogs, never
// mounting them: the host looks inside images that users brought, and a
// mount would hand a hostile filesystem to the kernel's ext4 driver.
// debugfs and e2fsck parse the image in user space instead.
package ext4img

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Tool finds an e2fsprogs binary: the sbin directories first, since a
// service's PATH often lacks them, then PATH.
func Tool(name string) (string, error) {
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found (install e2fsprogs): %w", name, err)
	}
	return p, nil
}

// run executes argv with the C locale and returns stdout; a failure carries
// the tail of stderr.
func run(ctx context.Context, name string, args ...string) ([]byte, []byte, error) {
	bin, err := Tool(name)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// ReadFile returns the contents of the regular file at path inside the
// ext4 image (a file or block device), at most limit bytes; fs.ErrNotExist
// when the image has no such file, an error when it is larger than limit
// or not a regular file. The image is opened read-only (debugfs's default).
func ReadFile(ctx context.Context, image, path string, limit int64) ([]byte, error) {
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\n\"") {
		return nil, fmt.Errorf("read %s from %s: path must be absolute without spaces or quotes", path, image)
	}
	// stat first: debugfs's cat prints whatever inode the path names,
	// a directory's blocks or a device's nothing, and says "not found"
	// only on stderr with a zero exit.
	out, errb, err := run(ctx, "debugfs", "-R", "stat "+path, image)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", path, image, err)
	}
	if bytes.Contains(errb, []byte("File not found")) || len(out) == 0 {
		return nil, fmt.Errorf("read %s from %s: %w", path, image, fs.ErrNotExist)
	}
	typ, size, err := parseStat(string(out))
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", path, image, err)
	}
	if typ != "regular" {
		return nil, fmt.Errorf("read %s from %s: is a %s, not a regular file", path, image, typ)
	}
	if size > limit {
		return nil, fmt.Errorf("read %s from %s: %d bytes, more than the %d allowed", path, image, size, limit)
	}
	out, _, err = run(ctx, "debugfs", "-R", "cat "+path, image)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", path, image, err)
	}
	if int64(len(out)) != size {
		return nil, fmt.Errorf("read %s from %s: read %d bytes of %d", path, image, len(out), size)
	}
	return out, nil
}

var (
	typeRE = regexp.MustCompile(`\bType: (\S+)`)
	sizeRE = regexp.MustCompile(`\bSize: (\d+)`)
)

// parseStat reads "Type: regular" and "Size: N" from debugfs's stat.
func parseStat(s string) (typ string, size int64, err error) {
	t, z := typeRE.FindStringSubmatch(s), sizeRE.FindStringSubmatch(s)
	if t == nil || z == nil {
		return "", 0, errors.New("debugfs stat: no type or size in its output")
	}
	size, err = strconv.ParseInt(z[1], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("debugfs stat: size %q: %w", z[1], err)
	}
	return t[1], size, nil
}

// Check runs e2fsck -fn: a forced, read-only check that changes nothing
// and fails on any inconsistency. An image that fails it is refused, not
// repaired: the host would otherwise boot (and a VM's kernel mount) a
// filesystem crafted to be inconsistent.
func Check(ctx context.Context, image string) error {
	if _, _, err := run(ctx, "e2fsck", "-f", "-n", image); err != nil {
		return fmt.Errorf("filesystem check of %s failed: %w", image, err)
	}
	return nil
}

// Make writes an ext4 image of sizeBytes at out, populated from dir
// (mkfs.ext4 -d), with the owners, modes, extended attributes (file
// capabilities among them) and device nodes the tree holds. out must not
// exist.
func Make(ctx context.Context, dir, out string, sizeBytes int64, label string) error {
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("make ext4 image: %w", err)
	}
	if err := f.Truncate(sizeBytes); err != nil {
		f.Close()
		return fmt.Errorf("make ext4 image: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("make ext4 image: %w", err)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-d", dir, "-E", "root_owner=0:0"}
	if label != "" {
		args = append(args, "-L", label)
	}
	args = append(args, out)
	if _, _, err := run(ctx, "mkfs.ext4", args...); err != nil {
		return fmt.Errorf("make ext4 image: %w", err)
	}
	return nil
}
