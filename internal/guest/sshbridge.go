package guest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"

	"atelier/internal/agent"
)

// sshChannelUpgrade is GET /ssh/channel: one channel of a user's SSH
// connection, terminated by the manager's proxy and carried here in plain
// frames (see agent.SSHChannelPath). Everything that can be refused is
// checked before the upgrade, so the proxy can pass the reason on.
func (s *Server) sshChannelUpgrade(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	user := q.Get("user")
	if _, err := resolveUser("user", user); err != nil {
		return err
	}
	switch kind := q.Get("type"); kind {
	case agent.SSHChanConnection:
		conn, err := upgrade(w, r, agent.SSHChannelProtocol)
		if conn == nil {
			return err
		}
		s.ssh.hold(conn)
		return nil
	case agent.SSHChanSession:
		_, err := s.serveBridged(w, r, func(ch *bridgeChannel) { s.ssh.session(user, ch, ch.reqs) })
		return err
	case agent.SSHChanDirectTCPIP:
		port, err := strconv.ParseUint(q.Get("port"), 10, 16)
		if err != nil {
			return errBadField("port", "must be a TCP port number")
		}
		tc, err := dialForward(agent.ForwardTarget{Host: q.Get("host"), Port: uint32(port)})
		if err != nil {
			return &apiError{status: http.StatusBadGateway, code: agent.CodeStartFailed, detail: err.Error()}
		}
		served, err := s.serveBridged(w, r, func(ch *bridgeChannel) {
			go func() {
				for range ch.reqs {
				}
			}()
			forward(ch, tc)
		})
		if !served {
			tc.Close()
		}
		return err
	default:
		return errBadField("type", "must be %q, %q or %q", agent.SSHChanConnection, agent.SSHChanSession, agent.SSHChanDirectTCPIP)
	}
}

// serveBridged upgrades the request to a framed channel, tracked so that
// agent shutdown closes it, and runs serve on it. served is false when the
// client was gone or the agent is stopping before serve could run.
func (s *Server) serveBridged(w http.ResponseWriter, r *http.Request, serve func(ch *bridgeChannel)) (served bool, err error) {
	conn, err := upgrade(w, r, agent.SSHChannelProtocol)
	if conn == nil {
		return false, err
	}
	ch := newBridgeChannel(conn)
	if !s.ssh.track(ch, true) {
		ch.Close()
		return false, nil
	}
	defer s.ssh.track(ch, false)
	serve(ch)
	return true, nil
}

// hold keeps a "connection" stream open until the proxy closes it or the
// agent stops; its end is how the proxy learns that the agent went away.
func (ss *sshServer) hold(conn net.Conn) {
	if !ss.track(conn, true) {
		conn.Close()
		return
	}
	defer ss.track(conn, false)
	_, _ = io.Copy(io.Discard, conn)
	conn.Close()
}

// bridgeChannel is a bridged channel seen as an ssh.Channel, so sessions
// and forwards run the same code on both transports. One goroutine reads
// the frames and never blocks on the program: data goes to a buffer the
// proxy may fill up to agent.SSHChannelWindow (Read grants the window back
// as the program consumes it), requests go to reqs, replies wake the
// SendRequest that waits for them.
type bridgeChannel struct {
	fc      *agent.FrameConn
	reqs    chan *chanRequest
	replies chan bool

	mu       sync.Mutex
	cond     sync.Cond
	in       bytes.Buffer
	inEOF    bool   // the proxy sent EOF or the stream ended
	consumed uint32 // read but not yet granted back
	closed   bool

	closeOnce sync.Once
}

func newBridgeChannel(conn net.Conn) *bridgeChannel {
	ch := &bridgeChannel{fc: agent.NewFrameConn(conn), reqs: make(chan *chanRequest, 4), replies: make(chan bool, 1)}
	ch.cond.L = &ch.mu
	go ch.readLoop()
	return ch
}

func (ch *bridgeChannel) readLoop() {
	// Closing reqs is the session's signal that the client went away.
	defer close(ch.reqs)
	defer close(ch.replies)
	defer ch.endInput()
	for {
		t, p, err := ch.fc.ReadFrame()
		if err != nil {
			return
		}
		switch t {
		case agent.FrameData:
			ch.mu.Lock()
			over := ch.in.Len()+int(ch.consumed)+len(p) > agent.SSHChannelWindow
			if !over && !ch.inEOF {
				ch.in.Write(p)
				ch.cond.Broadcast()
			}
			ch.mu.Unlock()
			if over {
				// The proxy ignored the window: stop serving it.
				ch.fc.Close()
				return
			}
		case agent.FrameEOF:
			ch.endInput()
		case agent.FrameRequest:
			req, err := agent.ParseRequest(p)
			if err != nil {
				ch.fc.Close()
				return
			}
			ch.reqs <- &chanRequest{Type: req.Type, WantReply: req.WantReply, Payload: req.Payload,
				reply: ch.fc.WriteReply}
		case agent.FrameReply:
			ok, err := agent.ParseReply(p)
			if err != nil {
				ch.fc.Close()
				return
			}
			select {
			case ch.replies <- ok:
			default: // nothing asked
			}
		}
	}
}

func (ch *bridgeChannel) endInput() {
	ch.mu.Lock()
	ch.inEOF = true
	ch.cond.Broadcast()
	ch.mu.Unlock()
}

// Read returns stdin data, granting the window back once a quarter of it
// has been consumed (with the rest still open, the proxy never waits on an
// empty buffer).
func (ch *bridgeChannel) Read(p []byte) (int, error) {
	ch.mu.Lock()
	for ch.in.Len() == 0 && !ch.inEOF && !ch.closed {
		ch.cond.Wait()
	}
	if ch.in.Len() == 0 {
		ch.mu.Unlock()
		return 0, io.EOF
	}
	n, _ := ch.in.Read(p)
	ch.consumed += uint32(n)
	grant := uint32(0)
	if ch.consumed >= agent.SSHChannelWindow/4 {
		grant, ch.consumed = ch.consumed, 0
	}
	ch.mu.Unlock()
	if grant > 0 {
		if err := ch.fc.WriteWindow(grant); err != nil {
			return n, nil // the stream is gone; the read loop ends the session
		}
	}
	return n, nil
}

func (ch *bridgeChannel) Write(p []byte) (int, error) { return ch.fc.Writer(agent.FrameData).Write(p) }
func (ch *bridgeChannel) CloseWrite() error           { return ch.fc.WriteFrame(agent.FrameEOF, nil) }

// Stderr writes stderr frames; reading it returns EOF.
func (ch *bridgeChannel) Stderr() io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{eofReader{}, ch.fc.Writer(agent.FrameStderr)}
}

func (ch *bridgeChannel) SendRequest(name string, wantReply bool, payload []byte) (bool, error) {
	if err := ch.fc.WriteRequest(agent.ChannelRequest{Type: name, WantReply: wantReply, Payload: payload}); err != nil {
		return false, err
	}
	if !wantReply {
		return false, nil
	}
	ok, open := <-ch.replies
	if !open {
		return false, errors.New("bridged channel closed")
	}
	return ok, nil
}

func (ch *bridgeChannel) Close() error {
	ch.closeOnce.Do(func() {
		ch.fc.Close()
		ch.mu.Lock()
		ch.closed = true
		ch.cond.Broadcast()
		ch.mu.Unlock()
	})
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
