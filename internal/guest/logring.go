package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
)

// logRing is a size-bounded process log with stable logical offsets. It
// keeps the current file and one rotated predecessor, each up to half the
// budget; offsets keep growing across rotations and restarts, so a reader
// tailing with nextOffset never sees offsets jump back (the reference
// truncated on restart, which silently broke every tail).
type logRing struct {
	mu       sync.Mutex
	path     string
	f        *os.File
	half     int64
	base     int64 // logical offset of the current file's first byte
	size     int64
	prevBase int64
	prevSize int64
	hasPrev  bool
}

func openLogRing(path string, maxBytes int64) (*logRing, error) {
	if err := os.Remove(path + ".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove old log %s.1: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat log %s: %w", path, err)
	}
	return &logRing{path: path, f: f, half: max(maxBytes/2, 4096), size: fi.Size()}, nil
}

// Write appends, rotating first when the current file would pass half the
// budget. Errors are swallowed after the first attempt to rotate so a
// full disk never blocks the process writing its output.
func (l *logRing) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return len(p), nil
	}
	if l.size > 0 && l.size+int64(len(p)) > l.half {
		if err := l.rotate(); err != nil {
			return len(p), nil
		}
	}
	n, _ := l.f.Write(p)
	l.size += int64(n)
	return len(p), nil
}

func (l *logRing) rotate() error {
	l.f.Close()
	l.f = nil
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	l.f = f
	l.prevBase, l.prevSize, l.hasPrev = l.base, l.size, true
	l.base += l.size
	l.size = 0
	return nil
}

// read returns up to limit bytes from logical offset, the offset actually
// used (later than asked when those bytes were rotated away), the next
// offset and the logical end.
func (l *logRing) read(offset, limit int64) ([]byte, int64, int64, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	end := l.base + l.size
	oldest := l.base
	if l.hasPrev {
		oldest = l.prevBase
	}
	offset = min(max(offset, oldest), end)
	out := make([]byte, 0, min(limit, end-offset))
	if l.hasPrev && offset < l.base {
		b, err := readRange(l.path+".1", offset-l.prevBase, min(limit, l.prevSize-(offset-l.prevBase)))
		if err != nil {
			return nil, 0, 0, 0, err
		}
		out = append(out, b...)
	}
	if rest := limit - int64(len(out)); rest > 0 && offset+int64(len(out)) >= l.base {
		from := offset + int64(len(out)) - l.base
		b, err := readRange(l.path, from, min(rest, l.size-from))
		if err != nil {
			return nil, 0, 0, 0, err
		}
		out = append(out, b...)
	}
	return out, offset, offset + int64(len(out)), end, nil
}

func readRange(path string, off, n int64) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read log: %w", err)
	}
	return b[:m], nil
}

func (l *logRing) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
