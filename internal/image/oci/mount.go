package oci

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
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
		dev, f, err := attachLoopRO(image)
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

// attachLoopRO binds file read-only to a free loop device with autoclear.
func attachLoopRO(file string) (string, *os.File, error) {
	backing, err := os.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("open image: %w", err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()
	for range 64 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("find free loop device: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		var f *os.File
		deadline := time.Now().Add(time.Second)
		for {
			f, err = os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil || !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			return "", nil, fmt.Errorf("open loop device: %w", err)
		}
		info := unix.LoopInfo64{Flags: unix.LO_FLAGS_AUTOCLEAR | unix.LO_FLAGS_READ_ONLY}
		copy(info.File_name[:len(info.File_name)-1], file)
		err = unix.IoctlLoopConfigure(int(f.Fd()), &unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info})
		if errors.Is(err, unix.EBUSY) {
			f.Close()
			continue
		}
		if err != nil {
			f.Close()
			return "", nil, fmt.Errorf("attach %s to %s: %w", file, dev, err)
		}
		return dev, f, nil
	}
	return "", nil, errors.New("attach loop device: every free device was taken concurrently")
}
