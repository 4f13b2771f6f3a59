package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// The agent's SSH server is reached by upgrading a fresh agent connection
// (GET SSHPath, Upgrade: SSHProtocol); the stream then carries the SSH
// protocol. Only the manager can open agent connections, which is why the
// agent's SSH server needs no client authentication of its own.
const (
	SSHPath     = "/ssh"
	SSHProtocol = "ssh"
)

// DialUpgrade opens a new (never pooled) connection to the agent, sends
// GET path with "Connection: Upgrade" and "Upgrade: proto", and returns the
// connection once the agent answers 101. Any other answer is returned as an
// *Error. ctx bounds the dial and the handshake only.
func (c *Client) DialUpgrade(ctx context.Context, path, proto string) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent upgrade %s: %w", path, err)
	}
	// The context's end (its deadline included) unblocks the handshake's
	// reads and writes; ctx.Err() is set by then, so callers see it.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("agent upgrade %s: %w", path, err)
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		stop()
		conn.Close()
		return nil, decodeError(resp)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), proto) {
		return fail(fmt.Errorf("agent switched to %q, want %q", resp.Header.Get("Upgrade"), proto))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fail(err)
	}
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

// bufferedConn hands out bytes the handshake read ahead before reading
// from the connection again.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) {
	if b.r.Buffered() > 0 {
		return b.r.Read(p)
	}
	return b.Conn.Read(p)
}
