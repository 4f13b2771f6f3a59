package sshproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/agent"
)

// lostGrace bounds how long the channels of a connection whose agent went
// away may take to say so before the connection closes.
const lostGrace = 2 * time.Second

// bridge serves the client's connection until it ends or the agent goes
// away (ctrl, the "connection" stream, ends). Every channel the client
// opens is carried to the agent on a stream of its own, in plain frames:
// the client's bytes are decrypted here once and never encrypted again.
// Global requests are answered here: none is offered, so nothing in a
// sandbox can open a listener reachable through the proxy (tcpip-forward)
// and keepalives get the "no" OpenSSH expects.
func bridge(ctx context.Context, down *ssh.ServerConn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request, cl *agent.Client, ctrl net.Conn, user string) {
	var active atomic.Int32 // channels being carried
	go func() {
		_, _ = io.Copy(io.Discard, ctrl)
		// The agent is gone (or the client left). Its channels' streams have
		// ended too: give them a moment to tell their clients why.
		for deadline := time.Now().Add(lostGrace); active.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		down.Close()
	}()
	go func() {
		for r := range reqs {
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}()
	var wg sync.WaitGroup
	sessions := make(chan struct{}, agent.SSHMaxSessions)
	for nc := range chans {
		q := url.Values{"type": {nc.ChannelType()}, "user": {user}}
		switch nc.ChannelType() {
		case agent.SSHChanSession:
			select {
			case sessions <- struct{}{}:
			default:
				_ = nc.Reject(ssh.ResourceShortage, "at most "+strconv.Itoa(agent.SSHMaxSessions)+" sessions per connection")
				continue
			}
		case agent.SSHChanDirectTCPIP:
			var p agent.ForwardTarget
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil || !p.Valid() {
				_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
				continue
			}
			q.Set("host", p.Host)
			q.Set("port", strconv.FormatUint(uint64(p.Port), 10))
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
			continue
		}
		wg.Add(1)
		active.Add(1)
		go func() {
			defer wg.Done()
			defer active.Add(-1)
			if nc.ChannelType() == agent.SSHChanSession {
				defer func() { <-sessions }()
			}
			bridgeChannel(ctx, nc, cl, q)
		}()
	}
	// The client went away. Its channels' request streams have ended, which
	// closes their agent streams (the agent then kills what they started).
	ctrl.Close()
	wg.Wait()
}

// bridgeChannel opens the client's channel on the agent, passing on the
// agent's refusal (an unknown user, a forward target that refused the
// connection), then carries it until either side closes.
func bridgeChannel(ctx context.Context, nc ssh.NewChannel, cl *agent.Client, q url.Values) {
	dctx, cancel := context.WithTimeout(ctx, agentTimeout)
	conn, err := cl.DialUpgrade(dctx, agent.SSHChannelPath+"?"+q.Encode(), agent.SSHChannelProtocol)
	cancel()
	if err != nil {
		var ae *agent.Error
		if errors.As(err, &ae) {
			_ = nc.Reject(ssh.ConnectionFailed, ae.Detail)
		} else {
			_ = nc.Reject(ssh.ConnectionFailed, "sandbox unreachable: "+err.Error())
		}
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	carry(ch, reqs, agent.NewFrameConn(conn), nc.ChannelType() == agent.SSHChanSession)
}

// carry joins the client's channel ch and the agent stream fc. The agent's
// frames are applied in order by one loop, replies to the client's requests
// included, so neither an exit status nor the channel's close ever
// overtakes output or a reply.
func carry(ch ssh.Channel, reqs <-chan *ssh.Request, fc *agent.FrameConn, session bool) {
	w := &window{avail: agent.SSHChannelWindow}
	w.cond.L = &w.mu
	// Requests waiting for the agent's reply, oldest first (RFC 4254
	// answers channel requests in order).
	pending := make(chan *ssh.Request, 16)
	var clientClosed atomic.Bool
	done := make(chan struct{}) // the agent's frames are all applied
	go func() {
		// Sessions copy in large chunks (every frame is a write here and a
		// read in the agent: scp and uploads go faster); forwards, which a
		// browser may open by the dozen, in small ones.
		size := 32 << 10
		if session {
			size = agent.MaxFramePayload
		}
		_, _ = io.CopyBuffer(windowWriter{w, fc}, ch, make([]byte, size))
		_ = fc.WriteFrame(agent.FrameEOF, nil)
	}()
	go func() {
		for r := range reqs {
			if r.WantReply {
				select {
				case pending <- r:
				case <-done:
					_ = r.Reply(false, nil)
					continue
				}
			}
			if err := fc.WriteRequest(agent.ChannelRequest{Type: r.Type, WantReply: r.WantReply, Payload: r.Payload}); err != nil {
				break
			}
		}
		// The client closed the channel: so does the agent stream.
		clientClosed.Store(true)
		fc.Close()
		for r := range reqs {
			_ = r.Reply(false, nil)
		}
	}()

	exited := false
	for {
		t, p, err := fc.ReadFrame()
		if err != nil {
			break
		}
		switch t {
		case agent.FrameData:
			_, err = ch.Write(p)
		case agent.FrameStderr:
			_, err = ch.Stderr().Write(p)
		case agent.FrameEOF:
			err = ch.CloseWrite()
		case agent.FrameRequest:
			var req agent.ChannelRequest
			if req, err = agent.ParseRequest(p); err != nil {
				break
			}
			exited = exited || req.Type == "exit-status" || req.Type == "exit-signal"
			ok, _ := ch.SendRequest(req.Type, req.WantReply, req.Payload)
			if req.WantReply {
				err = fc.WriteReply(ok)
			}
		case agent.FrameReply:
			var ok bool
			if ok, err = agent.ParseReply(p); err == nil {
				select {
				case r := <-pending:
					err = r.Reply(ok, nil)
				default:
					err = errors.New("reply to no request")
				}
			}
		case agent.FrameWindow:
			var n uint32
			if n, err = agent.ParseWindow(p); err == nil {
				w.grant(int(n))
			}
		}
		if err != nil {
			break
		}
	}
	close(done)
	w.close()
	fc.Close()
	for {
		select {
		case r := <-pending:
			_ = r.Reply(false, nil)
			continue
		default:
		}
		break
	}
	if session && !exited && !clientClosed.Load() {
		// Without this the client sees a bare "closed by remote host".
		_, _ = io.WriteString(ch.Stderr(), "atelier: lost the connection to the sandbox (it stopped or its agent restarted)\r\n")
	}
	ch.Close()
}

// window is how much data the agent will still take (see
// agent.SSHChannelWindow).
type window struct {
	mu     sync.Mutex
	cond   sync.Cond
	avail  int
	closed bool
}

func (w *window) grant(n int) {
	w.mu.Lock()
	w.avail += n
	w.cond.Broadcast()
	w.mu.Unlock()
}

func (w *window) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
}

// take waits for room and reserves up to n bytes of it.
func (w *window) take(n int) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.avail == 0 && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return 0, net.ErrClosed
	}
	n = min(n, w.avail)
	w.avail -= n
	return n, nil
}

// windowWriter sends data frames within the agent's window.
type windowWriter struct {
	w  *window
	fc *agent.FrameConn
}

func (ww windowWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := ww.w.take(min(len(p)-done, agent.MaxFramePayload))
		if err != nil {
			return done, err
		}
		if err := ww.fc.WriteFrame(agent.FrameData, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}
