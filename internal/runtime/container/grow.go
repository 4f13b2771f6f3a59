package container

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"atelier/internal/ids"
	"atelier/internal/sandbox"
)

const (
	// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64).
	ext4IocResizeFS = 0x40086610
	ext4SuperMagic  = 0xEF53
)

var _ sandbox.DiskGrower = (*Driver)(nil)

// GrowDisk grows a running sandbox's root filesystem into its grown volume,
// online, from the host: the loop device re-reads its backing file's size
// (LOOP_SET_CAPACITY) and ext4's resize ioctl grows the filesystem at the
// host's mount of the rootfs. The guest, in its user namespace, could do
// neither. A sandbox that is not running is an error: its next boot grows it.
func (d *Driver) GrowDisk(ctx context.Context, id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("grow disk: invalid sandbox id %q", id)
	}
	unlock, err := d.locks.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("grow disk of %s: %w", id, err)
	}
	defer unlock()
	b, err := os.ReadFile(filepath.Join(d.bundleDir(id), diskRecord))
	if err != nil {
		return fmt.Errorf("grow disk of %s: not running: %w", id, err)
	}
	loops, err := LoopsBacking(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("grow disk of %s: %w", id, err)
	}
	if len(loops) != 1 {
		return fmt.Errorf("grow disk of %s: %d loop devices back its volume, want 1 (not running?)", id, len(loops))
	}
	from, to, err := growMounted(loops[0], d.rootfs(id))
	if err != nil {
		return fmt.Errorf("grow disk of %s: %w", id, err)
	}
	d.log.Info("root filesystem grown", "sandbox_id", id, "from_blocks", from, "to_blocks", to)
	return nil
}

// growMounted makes the loop device dev take its backing file's current
// size, then grows the ext4 mounted at dir to fill it. It returns the
// filesystem's blocks before and after; the kernel returns at once when the
// filesystem already fills the device.
func growMounted(dev, dir string) (from, to uint64, err error) {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open loop device: %w", err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return 0, 0, fmt.Errorf("loop set capacity on %s: %w", dev, err)
	}
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, 0, fmt.Errorf("size of %s: %w", dev, errno)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if sfs.Type != ext4SuperMagic || sfs.Bsize <= 0 {
		return 0, 0, errors.New("the root filesystem is not ext4: cannot grow it online")
	}
	root, err := os.Open(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	blocks := size / uint64(sfs.Bsize)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, root.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		if errno == unix.EPERM {
			return 0, 0, fmt.Errorf("resize ext4 at %s: %w (an online grow needs CAP_SYS_RESOURCE; the next boot grows it offline)", dir, errno)
		}
		return 0, 0, fmt.Errorf("resize ext4 at %s to %d blocks: %w", dir, blocks, errno)
	}
	var after unix.Statfs_t
	if err := unix.Statfs(dir, &after); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return sfs.Blocks, after.Blocks, nil
}

// resize2fsBin grows a stopped volume's filesystem offline.
var resize2fsBin = "/usr/sbin/resize2fs"

// ext4Size reads the size the ext4 filesystem in file says it has, from
// its superblock (1024 bytes in): s_blocks_count_lo at 4, s_log_block_size
// at 24, s_magic at 56, s_feature_incompat at 96 (64bit is 0x80), and
// s_blocks_count_hi at 0x150.
func ext4Size(file string) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, fmt.Errorf("read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[56:]) != ext4SuperMagic {
		return 0, errors.New("not an ext4 filesystem")
	}
	blocks := uint64(le.Uint32(sb[4:]))
	if le.Uint32(sb[96:])&0x80 != 0 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	return int64(blocks) << (10 + le.Uint32(sb[24:])), nil
}

// growOffline grows the filesystem in a volume grown while its sandbox was
// stopped, before it is mounted: resize2fs on the file needs no
// CAP_SYS_RESOURCE, which an online grow does. A filesystem already as big
// as its file costs one superblock read.
func growOffline(ctx context.Context, file string) (bool, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return false, err
	}
	size, err := ext4Size(file)
	if err != nil {
		return false, err
	}
	// resize2fs rounds down to whole blocks (and ext4 to groups' needs):
	// less than a block of difference is nothing to grow.
	if fi.Size()-size < 64<<10 {
		return false, nil
	}
	// -f: the volume was unmounted cleanly by the stop, and a full e2fsck
	// first would cost seconds on a big disk at every grown boot.
	if out, err := exec.CommandContext(ctx, resize2fsBin, "-f", file).CombinedOutput(); err != nil {
		return false, fmt.Errorf("resize2fs %s: %w: %s", file, err, strings.TrimSpace(string(out)))
	}
	return true, nil
}
