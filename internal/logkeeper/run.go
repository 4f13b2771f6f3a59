package logkeeper

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// drainWait is how long the extra inputs are read after the main pipe
// ended: what a dying Firecracker wrote to its log FIFO last.
const drainWait = 100 * time.Millisecond

// flushIdle is how long an unfinished line is held back at most once the
// output pauses.
const flushIdle = 200 * time.Millisecond

// MainIfKeeper runs a keeper and exits when this process was started as
// one (os.Args[1] is Subcommand). Test binaries whose code starts keepers
// call it first thing in TestMain, so the default command works there too.
func MainIfKeeper() {
	if len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Run(os.Args[2:]))
	}
}

// Run is a keeper's main: it copies stdin and the extra inputs (fds 3…)
// to --file, rotating it, until stdin ends. It returns the exit code.
func Run(args []string) int {
	fs := flag.NewFlagSet(Subcommand, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	path := fs.String("file", "", "log file")
	maxBytes := fs.Int64("max-bytes", DefaultMaxBytes, "most bytes one file holds")
	keep := fs.Int("keep", DefaultKeep, "rotated files kept")
	extra := fs.Int("extra", 0, "extra inputs, fds 3 on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || !strings.HasPrefix(*path, "/") || *maxBytes < 1 || *keep < 0 || *extra < 0 || *extra > 8 {
		fmt.Fprintln(os.Stderr, "log-keeper: need --file ABSOLUTE-PATH, --max-bytes > 0, --keep >= 0, --extra 0..8")
		return 2
	}
	// The terminal and the session are not ours to follow, and the
	// guest's output must not stop because someone pressed Ctrl-C.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	rot := &Rotator{Path: *path, MaxBytes: *maxBytes, Keep: *keep}
	var mu sync.Mutex
	sink := func(p []byte) {
		mu.Lock()
		rot.Write(p)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	var extras []*os.File
	for i := 0; i < *extra; i++ {
		fd := 3 + i
		// exec hands the fd over blocking; non-blocking, it can be read
		// with a deadline.
		if err := syscall.SetNonblock(fd, true); err != nil {
			continue
		}
		f := os.NewFile(uintptr(fd), "input-"+strconv.Itoa(fd))
		extras = append(extras, f)
		wg.Add(1)
		go func() { defer wg.Done(); pump(f, sink) }()
	}
	// A prompt or a progress bar without a line end must not wait in
	// memory for the next line: held back lines are written once the
	// guest has been quiet for a moment.
	stopFlush, flushDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(flushDone)
		t := time.NewTicker(flushIdle)
		defer t.Stop()
		for {
			select {
			case <-stopFlush:
				return
			case <-t.C:
				mu.Lock()
				if idle, held := rot.Idle(); held && idle >= flushIdle {
					rot.Flush()
				}
				mu.Unlock()
			}
		}
	}()
	pump(os.Stdin, sink)
	for _, f := range extras {
		_ = f.SetReadDeadline(time.Now().Add(drainWait))
	}
	wg.Wait()
	close(stopFlush)
	<-flushDone
	// Only this goroutine is left: what is held back is written now.
	rot.Close()
	removeOwnPID(*path)
	return 0
}

// pump copies r to sink until r ends or fails.
func pump(r io.Reader, sink func([]byte)) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			sink(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// removeOwnPID removes the pid file when it still names this process.
func removeOwnPID(path string) {
	b, err := os.ReadFile(PIDFile(path))
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(PIDFile(path))
	}
}

// Rotator writes a log file that never grows past MaxBytes: a write that
// would cross it first moves Path to Path.1, Path.1 to Path.2 and so on,
// dropping what falls past Path.<Keep>. It prefers to cut at a line end,
// so lines stay whole unless one is longer than MaxBytes.
type Rotator struct {
	Path     string
	MaxBytes int64
	Keep     int

	f     *os.File
	size  int64
	carry []byte
	last  time.Time
	// Dropped counts bytes that could not be written (disk full, say):
	// the guest is never held up by its log.
	Dropped int64
}

func (r *Rotator) open() error {
	f, err := os.OpenFile(r.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = errors.New("not a regular file")
		}
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

// carryMax bounds the unfinished line held back; a longer one is written
// (and split at the limit) as it comes.
const carryMax = 16 << 10

// Write writes p, rotating as needed; it never fails, it drops. A line
// left unfinished at the end of p is held back until its end arrives (or
// Flush), so that rotation never splits it between two files.
func (r *Rotator) Write(p []byte) {
	r.last = time.Now()
	if len(r.carry) > 0 {
		// Only the held-back line is joined to its end; the rest of p is
		// written without a copy.
		j := bytes.IndexByte(p, '\n')
		if j < 0 && len(r.carry)+len(p) <= carryMax {
			r.carry = append(r.carry, p...)
			return
		}
		if j < 0 {
			j = len(p) - 1
		}
		r.carry = append(r.carry, p[:j+1]...)
		r.write(r.carry)
		r.carry = r.carry[:0]
		p = p[j+1:]
	}
	i := bytes.LastIndexByte(p, '\n')
	tail := p[i+1:]
	if len(tail) > carryMax {
		tail = nil
	}
	r.write(p[:len(p)-len(tail)])
	r.carry = append(r.carry, tail...)
}

// Flush writes the held-back unfinished line.
func (r *Rotator) Flush() {
	if len(r.carry) > 0 {
		r.write(r.carry)
		r.carry = r.carry[:0]
	}
}

// Idle reports how long ago the last Write was and whether a line is
// held back.
func (r *Rotator) Idle() (time.Duration, bool) { return time.Since(r.last), len(r.carry) > 0 }

func (r *Rotator) write(p []byte) {
	for len(p) > 0 {
		if r.f == nil {
			if err := r.open(); err != nil {
				r.Dropped += int64(len(p))
				return
			}
		}
		room := r.MaxBytes - r.size
		if room <= 0 {
			r.rotate()
			continue
		}
		n := int64(len(p))
		if n > room {
			// Cut after the last line end that fits; with none, a file
			// already holding something is rotated first so the line
			// starts a fresh one.
			if i := bytes.LastIndexByte(p[:room], '\n'); i >= 0 {
				n = int64(i + 1)
			} else if r.size > 0 {
				r.rotate()
				continue
			} else {
				n = room
			}
		}
		w, err := r.f.Write(p[:n])
		r.size += int64(w)
		p = p[w:]
		if err != nil {
			r.Dropped += int64(len(p))
			r.f.Close()
			r.f = nil
			return
		}
	}
}

// rotate shifts the files by one; with Keep 0 the live file is only
// emptied.
func (r *Rotator) rotate() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	if r.Keep == 0 {
		_ = os.Remove(r.Path)
		return
	}
	name := func(i int) string { return r.Path + "." + strconv.Itoa(i) }
	_ = os.Remove(name(r.Keep))
	for i := r.Keep - 1; i >= 1; i-- {
		_ = os.Rename(name(i), name(i+1))
	}
	_ = os.Rename(r.Path, name(1))
}

// Close writes what is held back and closes the live file.
func (r *Rotator) Close() {
	r.Flush()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}
