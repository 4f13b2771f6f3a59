package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress is the line the CLI shows while it waits (create, start,
// restart). On a terminal it is redrawn in place with the time so far and
// erased at the end; elsewhere (a pipe, a log) it is printed once, so
// scripts get one line and no control characters.
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
	mu    sync.Mutex
	msg   string
	stop  chan struct{}
	done  chan struct{}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func startProgress(w io.Writer, msg string) *progress {
	p := &progress{w: w, tty: isTerminal(w), start: time.Now(), msg: msg, stop: make(chan struct{}), done: make(chan struct{})}
	if !p.tty {
		fmt.Fprintln(w, msg+"…")
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		frames := `|/-\`
		for i := 0; ; i++ {
			p.mu.Lock()
			fmt.Fprintf(p.w, "\r\033[K%c %s… %.1fs", frames[i%len(frames)], p.msg, time.Since(p.start).Seconds())
			p.mu.Unlock()
			select {
			case <-p.stop:
				fmt.Fprint(p.w, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// set changes the message (a terminal shows it at the next redraw).
func (p *progress) set(msg string) {
	p.mu.Lock()
	p.msg = msg
	p.mu.Unlock()
}

// end erases the line and returns how long the wait took.
func (p *progress) end() time.Duration {
	if p.tty {
		select {
		case <-p.stop:
		default:
			close(p.stop)
		}
	}
	<-p.done
	return time.Since(p.start)
}
