package server

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// HTTPTimeouts bound what one client can hold on the manager's own HTTP
// listeners (TCP and unix socket; the edge's servers are Caddy's). The
// server-wide ReadTimeout and WriteTimeout of net/http are left at zero:
// they count from the start of the request, so they would cut every SSE
// stream, streaming exec and large upload or download at the same age.
// Read and Write are idle deadlines instead, renewed as bytes move, set per
// request through http.ResponseController.
type HTTPTimeouts struct {
	// ReadHeader bounds the arrival of a request's head (slowloris).
	ReadHeader time.Duration
	// Read bounds each wait for more of a request body: a body that stops
	// arriving for this long ends the request, however large it is.
	Read time.Duration
	// Write bounds each wait for the client to accept more of the response:
	// a client that stops reading for this long is cut off.
	Write time.Duration
	// Idle bounds a keep-alive connection waiting for its next request.
	Idle time.Duration
}

// DefaultHTTPTimeouts are the production values.
var DefaultHTTPTimeouts = HTTPTimeouts{
	ReadHeader: 10 * time.Second,
	Read:       60 * time.Second,
	Write:      60 * time.Second,
	Idle:       2 * time.Minute,
}

func (t HTTPTimeouts) withDefaults() HTTPTimeouts {
	d := DefaultHTTPTimeouts
	if t.ReadHeader > 0 {
		d.ReadHeader = t.ReadHeader
	}
	if t.Read > 0 {
		d.Read = t.Read
	}
	if t.Write > 0 {
		d.Write = t.Write
	}
	if t.Idle > 0 {
		d.Idle = t.Idle
	}
	return d
}

// wrap applies the per-request Read and Write deadlines. WebSocket (and any
// other) upgrades are handed over with no deadline: the hijacked connection
// belongs to its handler, whose protocol has its own keep-alive.
func (t HTTPTimeouts) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A keep-alive connection carries the previous request's write
		// deadline, which may have passed while it was idle.
		_ = rc.SetWriteDeadline(time.Time{})
		if r.Header.Get("Upgrade") != "" {
			next.ServeHTTP(w, r)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			_ = rc.SetReadDeadline(time.Now().Add(t.Read))
			r.Body = &idleBody{ReadCloser: r.Body, rc: rc, d: t.Read}
		}
		next.ServeHTTP(&idleWriter{ResponseWriter: w, rc: rc, d: t.Write}, r)
		// What the handler left in the buffer is flushed after it returns.
		_ = rc.SetWriteDeadline(time.Now().Add(t.Write))
	})
}

// idleBody renews the read deadline whenever body bytes arrive and clears
// it at the end of the body: net/http then starts reading the connection in
// the background to notice a client going away, and a deadline left there
// would cancel a long response (an exec still running, a stream).
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	d    time.Duration
	once sync.Once
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		// Only at the end: after a timeout the passed deadline must stay, so
		// net/http's drain of the unread body fails at once too.
		b.once.Do(func() { _ = b.rc.SetReadDeadline(time.Time{}) })
	} else if n > 0 && err == nil {
		_ = b.rc.SetReadDeadline(time.Now().Add(b.d))
	}
	return n, err
}

// idleWriter renews the write deadline before each write and flush, so a
// response may stream for as long as the client keeps taking it.
type idleWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (w *idleWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	return w.ResponseWriter.Write(p)
}

func (w *idleWriter) Flush() {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	_ = w.rc.Flush()
}

func (w *idleWriter) FlushError() error {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	return w.rc.Flush()
}

func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
