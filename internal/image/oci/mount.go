package oci

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"atelier/internal/loopdev"
)

// mountExt4 mounts the ext4 image (a file, through a read-only loop
// device, or a block device) read-only, nodev, nosuid, noexec and without
// journal replay, as a detached mount (fsopen/fsmount, never attached to any
// path), and returns a path to its root (/proc/self/fd/N) and a release.
// Nothing is visible in any mount namespace, and a process that dies
// mid-export leaks nothing: the mount goes with its last file descriptor,
// and the loop device (autoclear) with the mount.
//
// This hands the image to the kernel's ext4 driver, as the container
// runtime does with every sandbox volume; the images exported are the
// catalog's (built here, or imported only after e2fsck passed).
func mountExt4(image string) (string, func(), error) {
	fi, err := os.Stat(image)
	if err != nil {
		return "", nil, err
	}
	src := image
	var loop *os.File
	switch {
	case fi.Mode().IsRegular():
		dev, f, err := loopdev.Attach(image, true)
		if err != nil {
			return "", nil, err
		}
		src, loop = dev, f
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
	default:
		return "", nil, fmt.Errorf("%s is neither an ext4 file nor a block device", image)
	}
	closeLoop := func() {
		if loop != nil {
			loop.Close()
		}
	}
	fsfd, err := unix.Fsopen("ext4", unix.FSOPEN_CLOEXEC)
	if err != nil {
		closeLoop()
		return "", nil, fmt.Errorf("fsopen ext4: %w", err)
	}
	defer unix.Close(fsfd)
	steps := []struct {
		what string
		fn   func() error
	}{
		{"source", func() error { return unix.FsconfigSetString(fsfd, "source", src) }},
		{"ro", func() error { return unix.FsconfigSetFlag(fsfd, "ro") }},
		{"noload", func() error { return unix.FsconfigSetFlag(fsfd, "noload") }},
		{"create", func() error { return unix.FsconfigCreate(fsfd) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			closeLoop()
			return "", nil, fmt.Errorf("mount %s read-only (%s): %w", image, s.what, err)
		}
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC,
		unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		closeLoop()
		return "", nil, fmt.Errorf("fsmount %s: %w", image, err)
	}
	release := func() {
		unix.Close(mfd)
		closeLoop()
	}
	return "/proc/self/fd/" + strconv.Itoa(mfd), release, nil
}
