// Package loopdev attaches files to loop devices: the one place the
// container runtime (sandbox disks) and the OCI export (read-only image
// mounts) get a block device for a file.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Attach binds file to a free loop device and returns the device's path
// and an open handle on it. The device has the autoclear flag: the kernel
// detaches it when its last user goes away (the handle and, once mounted,
// the filesystem), so a process that dies between attach and mount, or a
// filesystem unmounted by hand, leaks no device. readOnly binds a
// read-only device over a file opened read-only.
func Attach(file string, readOnly bool) (string, *os.File, error) {
	mode, devMode := os.O_RDWR, os.O_RDWR
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if readOnly {
		mode, devMode = os.O_RDONLY, os.O_RDONLY
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	backing, err := os.OpenFile(file, mode, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", file, err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()
	// GET_FREE only proposes a device; a concurrent attacher (ours or
	// losetup) may bind it first, and then LOOP_CONFIGURE says EBUSY.
	for attempt := 0; attempt < 64; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("find free loop device: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		f, err := openDevice(dev, devMode)
		if err != nil {
			return "", nil, err
		}
		err = configure(f, backing, file, flags)
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

// openDevice opens a loop device node, waiting briefly for devtmpfs to
// create a node that LOOP_CTL_GET_FREE has just added.
func openDevice(dev string, mode int) (*os.File, error) {
	deadline := time.Now().Add(time.Second)
	for {
		f, err := os.OpenFile(dev, mode|unix.O_CLOEXEC, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("open loop device: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func configure(dev, backing *os.File, name string, flags uint32) error {
	info := unix.LoopInfo64{Flags: flags}
	copy(info.File_name[:len(info.File_name)-1], name)
	err := unix.IoctlLoopConfigure(int(dev.Fd()), &unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info})
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	// Kernels before 5.8 lack LOOP_CONFIGURE: bind, then set the flags.
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), &info); err != nil {
		unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}
