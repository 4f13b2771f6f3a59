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
		return BufferedConn(conn, br), nil
	}
	return conn, nil
}

// BufferedConn is c with its reads served by r, a reader over c: one that
// holds bytes an upgrade handshake read ahead, or one that reads in large
// pieces. (A bufio.Reader whose buffer is empty reads large requests
// straight from c.)
func BufferedConn(c net.Conn, r io.Reader) net.Conn { return &bufferedConn{Conn: c, r: r} }

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
