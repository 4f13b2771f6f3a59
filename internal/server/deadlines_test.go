package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"atelier/internal/store"
)

// short are the test's timeouts; the tests show each one cuts what it
// should and none cuts a stream that keeps moving.
var short = HTTPTimeouts{ReadHeader: 400 * time.Millisecond, Read: 400 * time.Millisecond, Write: 400 * time.Millisecond, Idle: 400 * time.Millisecond}

type timeoutEnv struct {
	srv  *Server
	addr string
	dir  string
	id   string
}

func newTimeoutEnv(t *testing.T, withSandbox bool) *timeoutEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "atlto")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, stop := startMockManagerWith(t, dir, nil, Options{HTTPTimeouts: short})
	e := &timeoutEnv{srv: srv, addr: srv.Addr(), dir: dir}
	if !withSandbox {
		t.Cleanup(func() { stop() })
		return e
	}
	code, b := e.call(t, "POST", "/api/sandboxes", `{}`)
	var v struct{ ID string }
	if json.Unmarshal(b, &v); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	e.id = v.ID
	t.Cleanup(func() {
		if code, b := e.call(t, "DELETE", "/api/sandboxes/"+e.id, ""); code != http.StatusNoContent {
			t.Errorf("destroy: %d %s", code, b)
		}
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if _, err := srv.Sandboxes.Wait(ctxFor(t, 30*time.Second), e.id); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *timeoutEnv) call(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+e.addr+path, strings.NewReader(body))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (e *timeoutEnv) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads from c until the server closes it and returns how long
// that took, failing when it is still open after limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// TestSlowlorisHeaders: a client that sends its request head one byte at a
// time, each well within any per-read timeout, is cut at ReadHeader.
func TestSlowlorisHeaders(t *testing.T) {
	e := newTimeoutEnv(t, false)
	c := e.dial(t)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		head := "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + strings.Repeat("a", 1000)
		for i := 0; i < len(head); i++ {
			if _, err := c.Write([]byte{head[i]}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, br)
	elapsed := time.Since(start)
	c.Close()
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("slow head still open after %v", elapsed)
	}
	if elapsed < short.ReadHeader-50*time.Millisecond || elapsed > short.ReadHeader+time.Second {
		t.Fatalf("cut after %v, want about %v", elapsed, short.ReadHeader)
	}
	<-done
}

// TestIdleKeepAlive: a keep-alive connection with no next request is closed
// after Idle.
func TestIdleKeepAlive(t *testing.T) {
	e := newTimeoutEnv(t, false)
	c := e.dial(t)
	fmt.Fprint(c, "GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || res.Close {
		t.Fatalf("first request: %d close=%v", res.StatusCode, res.Close)
	}
	if d := closedWithin(t, c, 3*time.Second); d < short.Idle-50*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
}

// TestSlowBody: a body that stops arriving ends the request after Read,
// however long the client promised it would be.
func TestSlowBody(t *testing.T) {
	e := newTimeoutEnv(t, false)
	c := e.dial(t)
	fmt.Fprint(c, "POST /api/sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	if d := closedWithin(t, c, 3*time.Second); d > short.Read+time.Second {
		t.Fatalf("stalled body held for %v", d)
	}
	if n, _ := e.srv.Store.ListSandboxes(ctxFor(t, 5*time.Second), store.SandboxFilter{}); len(n) != 0 {
		t.Fatalf("a truncated request created %d sandboxes", len(n))
	}
}

// TestStreamsOutliveTimeouts: what keeps moving is never cut: an SSE stream
// open for many times every timeout, an upload that trickles in over many
// Read periods, a long exec whose answer comes after several Write periods.
func TestStreamsOutliveTimeouts(t *testing.T) {
	e := newTimeoutEnv(t, true)

	// Events: open the stream, wait past every timeout, then cause an event.
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/api/events", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	time.Sleep(5 * short.Idle)

	// A slow upload: 20 chunks, 150 ms apart (3 s in all, far past Read).
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 20; i++ {
			pw.Write([]byte(fmt.Sprintf("chunk %02d\n", i)))
			time.Sleep(150 * time.Millisecond)
		}
		pw.Close()
	}()
	up, _ := http.NewRequest("PUT", "http://"+e.addr+"/api/sandboxes/"+e.id+"/files?path=slow.txt", pr)
	ures, err := http.DefaultClient.Do(up)
	if err != nil {
		t.Fatalf("slow upload: %v", err)
	}
	b, _ := io.ReadAll(ures.Body)
	ures.Body.Close()
	if ures.StatusCode/100 != 2 {
		t.Fatalf("slow upload: %d %s", ures.StatusCode, b)
	}
	got, err := os.ReadFile(filepath.Join(e.dir, "s", "mock", e.id, "home", "slow.txt"))
	if err != nil || strings.Count(string(got), "chunk") != 20 {
		t.Fatalf("uploaded file: %q %v", got, err)
	}

	// A long exec: the response comes after 5 Write periods of silence.
	if code, b := e.call(t, "POST", "/api/sandboxes/"+e.id+"/exec", `{"argv":["sleep","2"]}`); code != 200 {
		t.Fatalf("long exec: %d %s", code, b)
	}

	// The stream is still there and delivers the next event.
	if code, b := e.call(t, "POST", "/api/sandboxes/"+e.id+"/stop", ""); code/100 != 2 {
		t.Fatalf("stop: %d %s", code, b)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("event stream closed")
			}
			if strings.Contains(l, "stopping") || strings.Contains(l, "stopped") {
				return
			}
		case <-deadline:
			t.Fatal("no event after the timeouts elapsed")
		}
	}
}

// TestSlowReader: a client that stops reading a large response is cut off
// after Write instead of holding the handler forever.
func TestSlowReader(t *testing.T) {
	e := newTimeoutEnv(t, true)
	big := filepath.Join(e.dir, "s", "mock", e.id, "home", "big.bin")
	if err := os.WriteFile(big, make([]byte, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// A small receive window keeps what loopback can buffer to a few MiB, and
	// the stall is long enough for a server slowed by -race on a loaded
	// machine to fill it and then hit the write deadline: a 2 s stall once
	// let a slow server deliver everything without ever blocking.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		})
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /api/sandboxes/%s/files?path=big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n", e.id)
	time.Sleep(short.Write + 8*time.Second) // read nothing
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after the client stalled; read %d bytes", n)
	}
	t.Logf("read %d bytes after the stall, err %v", n, err)
	if n >= 64<<20 {
		t.Fatalf("whole response delivered (%d bytes) to a client that stalled", n)
	}
}
