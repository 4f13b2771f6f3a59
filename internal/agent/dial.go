package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Dialer opens one byte stream to the agent. The client's transport calls
// it for every new pooled connection.
type Dialer func(ctx context.Context) (net.Conn, error)

// UnixDialer dials the agent's unix socket (mock and container runtimes).
func UnixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("dial agent socket %s: %w", path, err)
		}
		return c, nil
	}
}

// Hybrid vsock tuning. Firecracker holds or resets a CONNECT while the
// guest's vsock driver or listener is not up yet, so a short first attempt
// that is retried beats one long wait (the reference went from ~5.7 s to
// ~1.5 s boots with this); the per-attempt timeout grows so a guest that
// is merely busy still gets to answer.
const (
	vsockFirstAttempt = 50 * time.Millisecond
	vsockMaxAttempt   = time.Second
	vsockRetryPause   = 5 * time.Millisecond
	vsockMaxAckLine   = 32
)

// VsockDialer dials a guest port through Firecracker's hybrid vsock: it
// connects the VM's unix socket (udsPath), writes "CONNECT <port>\n" and
// requires "OK <host port>\n" back before handing over the connection.
// Refused, missing-socket, reset and timed-out attempts are retried until
// ctx is done, because that is how Firecracker answers before the guest
// listens.
func VsockDialer(udsPath string, port uint32) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		attempt := vsockFirstAttempt
		for {
			c, err := vsockConnect(ctx, udsPath, port, attempt)
			if err == nil {
				return c, nil
			}
			if !retryableVsock(err) {
				return nil, fmt.Errorf("dial vsock %s port %d: %w", udsPath, port, err)
			}
			if isTimeout(err) && attempt < vsockMaxAttempt {
				attempt = min(attempt*2, vsockMaxAttempt)
			}
			t := time.NewTimer(vsockRetryPause)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("dial vsock %s port %d: %w (last attempt: %v)", udsPath, port, ctx.Err(), err)
			case <-t.C:
			}
		}
	}
}

// errBadAck is a handshake answer that is not "OK <n>": not retryable,
// since something other than Firecracker is on the socket.
var errBadAck = errors.New("unexpected vsock handshake reply")

func vsockConnect(ctx context.Context, udsPath string, port uint32, attempt time.Duration) (net.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(actx, "unix", udsPath)
	if err != nil {
		return nil, err
	}
	deadline, _ := actx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	// A context cancelled mid-handshake must unblock the read below.
	stop := context.AfterFunc(actx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		c.Close()
		return nil, err
	}
	line, err := readAckLine(c)
	if err != nil {
		c.Close()
		if actx.Err() != nil && ctx.Err() == nil {
			return nil, os.ErrDeadlineExceeded
		}
		return nil, err
	}
	if !validAck(line) {
		c.Close()
		return nil, fmt.Errorf("%w: %q", errBadAck, line)
	}
	if !stop() {
		// The deadline func already ran (or is running): the connection's
		// deadline is poisoned, so treat the attempt as timed out.
		c.Close()
		return nil, os.ErrDeadlineExceeded
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readAckLine reads byte by byte so nothing after the newline (the first
// bytes of the HTTP answer, in theory) is swallowed by a buffer, and stops
// at a small bound so a peer that never sends a newline cannot make us
// read forever.
func readAckLine(c net.Conn) (string, error) {
	buf := make([]byte, 0, vsockMaxAckLine)
	var b [1]byte
	for len(buf) < vsockMaxAckLine {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(buf), nil
			}
			buf = append(buf, b[0])
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", io.ErrUnexpectedEOF
			}
			return "", err
		}
	}
	return "", fmt.Errorf("%w: no newline within %d bytes", errBadAck, vsockMaxAckLine)
}

func validAck(line string) bool {
	if len(line) < 4 || line[:3] != "OK " {
		return false
	}
	_, err := strconv.ParseUint(line[3:], 10, 32)
	return err == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// retryableVsock is true for the ways Firecracker says "guest not
// listening yet": the socket file is not created yet, nobody accepts, the
// VMM closes or resets the stream, or it holds the CONNECT past our
// attempt deadline.
func retryableVsock(err error) bool {
	switch {
	case errors.Is(err, syscall.ENOENT),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		isTimeout(err):
		return true
	}
	return false
}

// TLSDialer dials the agent over TCP with mutual TLS (the kubernetes
// runtime's pod IPs): addr resolves where the agent is now, dial makes the
// TCP connection (nil: from this network namespace; tests reach a test
// cluster's pod network through theirs), and the handshake must succeed
// before the connection is handed over.
func TLSDialer(addr func(ctx context.Context) (string, error), cfg *tls.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) Dialer {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return func(ctx context.Context) (net.Conn, error) {
		a, err := addr(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial agent: %w", err)
		}
		raw, err := dial(ctx, "tcp", a)
		if err != nil {
			return nil, fmt.Errorf("dial agent %s: %w", a, err)
		}
		c := tls.Client(raw, cfg)
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("dial agent %s: %w", a, err)
		}
		return c, nil
	}
}
