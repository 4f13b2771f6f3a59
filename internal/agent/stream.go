package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/coder/websocket"
)

func base64Decode(s string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(s)
}

// maxStreamMessage bounds one WebSocket message read by the host.
const maxStreamMessage = 4 << 20

func (c *Client) dialWS(ctx context.Context, path string) (*websocket.Conn, error) {
	conn, resp, err := websocket.Dial(ctx, "ws://agent"+path, &websocket.DialOptions{HTTPClient: c.http})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("agent websocket %s: %w", path, err)
	}
	conn.SetReadLimit(maxStreamMessage)
	return conn, nil
}

// ExecStream is a running streaming exec (GET /exec/stream).
type ExecStream struct {
	conn *websocket.Conn
}

// ExecStream starts a command whose output streams back as it is produced.
// ctx bounds the handshake. Closing the stream (Close, or Wait's context
// ending) disconnects, which makes the agent kill the command's group.
func (c *Client) ExecStream(ctx context.Context, req ExecRequest) (*ExecStream, error) {
	conn, err := c.dialWS(ctx, "/exec/stream")
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(req)
	if err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("encode exec request: %w", err)
	}
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("send exec request: %w", err)
	}
	return &ExecStream{conn: conn}, nil
}

// WriteStdin sends bytes to the command's stdin (needs StdinStream).
func (s *ExecStream) WriteStdin(ctx context.Context, p []byte) error {
	return s.conn.Write(ctx, websocket.MessageBinary, p)
}

// CloseStdin sends EOF to the command's stdin.
func (s *ExecStream) CloseStdin(ctx context.Context) error {
	return s.control(ctx, StreamControl{Type: StreamCloseStdin})
}

// Kill signals the command's whole process group ("" = KILL).
func (s *ExecStream) Kill(ctx context.Context, signal string) error {
	return s.control(ctx, StreamControl{Type: StreamKill, Signal: signal})
}

func (s *ExecStream) control(ctx context.Context, m StreamControl) error {
	b, _ := json.Marshal(m)
	return s.conn.Write(ctx, websocket.MessageText, b)
}

// Wait copies output to stdout and stderr (either may be nil) until the
// command ends, and returns its exit event. A command that could not start
// returns an *Error.
func (s *ExecStream) Wait(ctx context.Context, stdout, stderr io.Writer) (*StreamEvent, error) {
	defer s.conn.CloseNow()
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			return nil, fmt.Errorf("read exec stream: %w", err)
		}
		if typ == websocket.MessageBinary {
			if len(data) == 0 {
				continue
			}
			var w io.Writer
			switch data[0] {
			case StreamStdout:
				w = stdout
			case StreamStderr:
				w = stderr
			}
			if w != nil {
				if _, err := w.Write(data[1:]); err != nil {
					return nil, fmt.Errorf("copy exec output: %w", err)
				}
			}
			continue
		}
		var ev StreamEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return nil, fmt.Errorf("decode exec event: %w", err)
		}
		switch ev.Type {
		case StreamExit:
			s.conn.Close(websocket.StatusNormalClosure, "")
			return &ev, nil
		case StreamError:
			s.conn.Close(websocket.StatusNormalClosure, "")
			return nil, &Error{Code: ev.Code, Detail: ev.Detail}
		}
	}
}

// Close abandons the stream; the agent kills the command's group.
func (s *ExecStream) Close() error {
	return s.conn.CloseNow()
}

// AttachTerminal opens a viewer on a terminal session. Binary messages are
// raw bytes both ways; see TerminalControl for the text messages. The
// first binary messages replay the session's recent output.
func (c *Client) AttachTerminal(ctx context.Context, id string) (*websocket.Conn, error) {
	return c.dialWS(ctx, "/terminals/"+url.PathEscape(id)+"/attach")
}

// SendResize asks an attached terminal to resize.
func SendResize(ctx context.Context, conn *websocket.Conn, cols, rows int) error {
	b, _ := json.Marshal(TerminalControl{Type: TerminalResize, Cols: cols, Rows: rows})
	return conn.Write(ctx, websocket.MessageText, b)
}

// IsClosed reports whether err is a normal WebSocket close.
func IsClosed(err error) bool {
	return websocket.CloseStatus(err) == websocket.StatusNormalClosure || errors.Is(err, io.EOF)
}
