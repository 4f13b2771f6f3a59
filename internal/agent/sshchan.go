package agent

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// The manager's SSH proxy terminates the user's SSH connection itself and
// carries each channel the user opens to the agent on an agent connection
// of its own (GET SSHChannelPath?type=…, Upgrade: SSHChannelProtocol), in
// plain frames. The bytes are then encrypted once, between the user and the
// proxy, instead of a second time on a hop that never leaves the host (an
// SSH session to the agent's own server costs as much CPU again as the
// user's, and halved the transfer rate). Like every agent connection, only
// the manager can open one.
const (
	SSHChannelPath     = "/ssh/channel"
	SSHChannelProtocol = "ssh-channel"
)

// Kinds of bridged channel (the "type" query parameter). A "connection"
// carries no data: it stands for the user's SSH connection, checks the
// unix user once, and its end tells the proxy that the agent went away.
const (
	SSHChanConnection  = "connection"
	SSHChanSession     = "session"
	SSHChanDirectTCPIP = "direct-tcpip"
)

// ForwardTarget is the payload of a direct-tcpip channel open (RFC 4254
// section 7.2), decoded with ssh.Unmarshal by the proxy and by the agent's
// own SSH server.
type ForwardTarget struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// Valid reports whether the target names a host and a TCP port.
func (t ForwardTarget) Valid() bool { return t.Host != "" && t.Port > 0 && t.Port <= 65535 }

// SSHMaxSessions bounds the session channels open at once on one SSH
// connection (OpenSSH's MaxSessions default).
const SSHMaxSessions = 10

// FrameType is the first byte of a frame on a bridged channel.
type FrameType byte

// Frames mirror the SSH connection protocol's channel messages (RFC 4254
// section 5).
const (
	FrameData    FrameType = 1 // channel data
	FrameStderr  FrameType = 2 // extended data, stderr; agent to proxy only
	FrameEOF     FrameType = 3 // the sender writes no more data
	FrameRequest FrameType = 4 // a channel request
	FrameReply   FrameType = 5 // the answer to a request that wanted one
	FrameWindow  FrameType = 6 // agent to proxy: n more bytes of data may be sent
)

// SSHChannelWindow is how many bytes of data the proxy may send the agent
// before a FrameWindow grants more. The agent buffers that much and so never
// stops reading its connection: a program that does not read its stdin
// cannot hide the proxy closing the channel (the stream's own flow control
// would, and the program would outlive the session).
const SSHChannelWindow = 1 << 20

// MaxFramePayload bounds one frame's payload; longer writes are split.
const MaxFramePayload = 256 << 10

const frameHeader = 5 // type byte + big-endian uint32 length

// FrameConn reads and writes frames on a bridged channel's connection.
// Writes are safe from several goroutines; reads are for one.
type FrameConn struct {
	c   net.Conn
	r   *bufio.Reader
	buf []byte

	wmu sync.Mutex
	hdr [frameHeader]byte
}

// NewFrameConn frames c.
func NewFrameConn(c net.Conn) *FrameConn {
	// Small buffers: a payload larger than the reader's buffer is read
	// straight into buf, which only grows to the largest frame seen, so an
	// idle forward costs little.
	return &FrameConn{c: c, r: bufio.NewReaderSize(c, 32<<10)}
}

// Close closes the connection; the other side's reads end.
func (f *FrameConn) Close() error { return f.c.Close() }

// WriteFrame sends p as frames of type t, split at MaxFramePayload. An EOF,
// request or reply frame must fit in one.
func (f *FrameConn) WriteFrame(t FrameType, p []byte) error {
	if (t != FrameData && t != FrameStderr) && len(p) > MaxFramePayload {
		return fmt.Errorf("frame %d: payload of %d bytes exceeds %d", t, len(p), MaxFramePayload)
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), MaxFramePayload)
		f.hdr[0] = byte(t)
		binary.BigEndian.PutUint32(f.hdr[1:], uint32(n))
		// One writev per frame, without copying the payload.
		bufs := net.Buffers{f.hdr[:], p[:n]}
		if _, err := bufs.WriteTo(f.c); err != nil {
			return fmt.Errorf("write frame: %w", err)
		}
		p = p[n:]
	}
	return nil
}

// ReadFrame returns the next frame. The payload is only valid until the
// next call. io.EOF means the other side closed the connection.
func (f *FrameConn) ReadFrame() (FrameType, []byte, error) {
	var hdr [frameHeader]byte
	if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("read frame header: %w", err)
		}
		return 0, nil, err
	}
	t, n := FrameType(hdr[0]), binary.BigEndian.Uint32(hdr[1:])
	if t < FrameData || t > FrameWindow {
		return 0, nil, fmt.Errorf("read frame: unknown frame type %d", t)
	}
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("read frame: payload of %d bytes exceeds %d", n, MaxFramePayload)
	}
	if int(n) > cap(f.buf) {
		f.buf = make([]byte, n)
	}
	p := f.buf[:n]
	if _, err := io.ReadFull(f.r, p); err != nil {
		return 0, nil, fmt.Errorf("read frame payload: %w", noEOF(err))
	}
	return t, p, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Writer is an io.Writer that sends what it is given as frames of type t.
func (f *FrameConn) Writer(t FrameType) io.Writer { return frameWriter{f, t} }

type frameWriter struct {
	f *FrameConn
	t FrameType
}

func (w frameWriter) Write(p []byte) (int, error) {
	if err := w.f.WriteFrame(w.t, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ChannelRequest is a channel request as it travels in a FrameRequest.
type ChannelRequest struct {
	Type      string
	WantReply bool
	Payload   []byte
}

// WriteRequest sends a channel request.
func (f *FrameConn) WriteRequest(r ChannelRequest) error {
	if len(r.Type) == 0 || len(r.Type) > 255 {
		return fmt.Errorf("channel request type of %d bytes", len(r.Type))
	}
	p := make([]byte, 0, 2+len(r.Type)+len(r.Payload))
	want := byte(0)
	if r.WantReply {
		want = 1
	}
	p = append(p, want, byte(len(r.Type)))
	p = append(p, r.Type...)
	p = append(p, r.Payload...)
	return f.WriteFrame(FrameRequest, p)
}

// ParseRequest decodes a FrameRequest payload; the result does not alias p.
func ParseRequest(p []byte) (ChannelRequest, error) {
	if len(p) < 2 || p[0] > 1 || p[1] == 0 || len(p) < 2+int(p[1]) {
		return ChannelRequest{}, errors.New("malformed channel request frame")
	}
	n := 2 + int(p[1])
	return ChannelRequest{Type: string(p[2:n]), WantReply: p[0] == 1, Payload: append([]byte(nil), p[n:]...)}, nil
}

// WriteReply answers the oldest request that wanted a reply.
func (f *FrameConn) WriteReply(ok bool) error {
	b := []byte{0}
	if ok {
		b[0] = 1
	}
	return f.WriteFrame(FrameReply, b)
}

// ParseReply decodes a FrameReply payload.
func ParseReply(p []byte) (bool, error) {
	if len(p) != 1 || p[0] > 1 {
		return false, errors.New("malformed reply frame")
	}
	return p[0] == 1, nil
}

// WriteWindow grants the proxy n more bytes of data.
func (f *FrameConn) WriteWindow(n uint32) error {
	return f.WriteFrame(FrameWindow, binary.BigEndian.AppendUint32(nil, n))
}

// ParseWindow decodes a FrameWindow payload.
func ParseWindow(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, errors.New("malformed window frame")
	}
	return binary.BigEndian.Uint32(p), nil
}
