package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

const (
	copyChunk = 1 << 20
	// zeroBlock is the granularity of hole punching by omission: a block of
	// this size that reads all zero is not written.
	zeroBlock = 64 << 10
)

var zeros = make([]byte, zeroBlock)

// CopySparse copies src into dst and writes only data: it walks src's data
// extents (SEEK_DATA/SEEK_HOLE) and skips blocks that read all zero, so a
// 10 GiB image holding 1 GiB costs 1 GiB. dst must read zeros wherever
// nothing is written: a new file, or a fresh thin volume. With truncate set,
// dst is sized to src (a file); leave it unset for a block device. It
// returns the bytes written.
func CopySparse(ctx context.Context, dst, src *os.File, truncate bool) (int64, error) {
	fi, err := src.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", src.Name(), err)
	}
	size := fi.Size()
	buf := make([]byte, copyChunk)
	var written int64
	copyRange := func(from, to int64) error {
		for pos := from; pos < to; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int64(len(buf))
			if to-pos < n {
				n = to - pos
			}
			got, err := src.ReadAt(buf[:n], pos)
			if err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
				return fmt.Errorf("read %s at %d: %w", src.Name(), pos, err)
			}
			for off := int64(0); off < n; off += zeroBlock {
				end := min(off+zeroBlock, n)
				blk := buf[off:end]
				if bytes.Equal(blk, zeros[:len(blk)]) {
					continue
				}
				if _, err := dst.WriteAt(blk, pos+off); err != nil {
					return fmt.Errorf("write %s at %d: %w", dst.Name(), pos+off, err)
				}
				written += int64(len(blk))
			}
			pos += n
		}
		return nil
	}
	fd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			// A filesystem without extent queries: scan the rest; the zero
			// check still keeps the copy sparse.
			if err := copyRange(off, size); err != nil {
				return written, err
			}
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if err := copyRange(data, hole); err != nil {
			return written, err
		}
		off = hole
	}
	if truncate {
		if err := dst.Truncate(size); err != nil {
			return written, fmt.Errorf("size %s: %w", dst.Name(), err)
		}
	}
	return written, nil
}
