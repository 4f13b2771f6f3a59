package sshproxy

import (
	"errors"
	"io"
	"sync"

	"golang.org/x/crypto/ssh"
)

// Global requests that would make the agent listen for the client (remote
// forwarding). They are refused: nothing in a sandbox may open a listener
// reachable through the proxy.
var refusedGlobal = map[string]bool{
	"tcpip-forward":                          true,
	"cancel-tcpip-forward":                   true,
	"streamlocal-forward@openssh.com":        true,
	"cancel-streamlocal-forward@openssh.com": true,
}

// bridge joins the client connection and the agent connection until either
// ends: every channel the client opens is opened on the agent and piped,
// and global requests travel both ways.
func bridge(down *ssh.ServerConn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request, up *upConn) {
	// The agent going away (sandbox stopped) ends the client's connection.
	go func() {
		_ = up.Wait()
		down.Close()
	}()
	go forwardGlobal(up.reqs, down)
	go func() {
		for r := range reqs {
			if refusedGlobal[r.Type] {
				if r.WantReply {
					_ = r.Reply(false, nil)
				}
				continue
			}
			forwardRequest(r, up)
		}
	}()
	var wg sync.WaitGroup
	for nc := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bridgeChannel(nc, up)
		}()
	}
	// The client went away: so does the agent connection, which ends
	// every piped channel (and the agent kills what the channels started).
	up.Close()
	wg.Wait()
}

func forwardGlobal(reqs <-chan *ssh.Request, to ssh.Conn) {
	for r := range reqs {
		forwardRequest(r, to)
	}
}

func forwardRequest(r *ssh.Request, to ssh.Conn) {
	ok, payload, err := to.SendRequest(r.Type, r.WantReply, r.Payload)
	if r.WantReply {
		_ = r.Reply(ok && err == nil, payload)
	}
}

// forwardChannelRequest passes a channel request on; channel request
// replies carry no payload.
func forwardChannelRequest(r *ssh.Request, to ssh.Channel) {
	ok, err := to.SendRequest(r.Type, r.WantReply, r.Payload)
	if r.WantReply {
		_ = r.Reply(ok && err == nil, nil)
	}
}

// bridgeChannel opens the client's channel on the agent (passing on the
// agent's refusal, e.g. a direct-tcpip target that refused the connection)
// and pipes data, extended data, EOF, requests and close both ways.
func bridgeChannel(nc ssh.NewChannel, up ssh.Conn) {
	upCh, upReqs, err := up.OpenChannel(nc.ChannelType(), nc.ExtraData())
	if err != nil {
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			_ = nc.Reject(oce.Reason, oce.Message)
		} else {
			_ = nc.Reject(ssh.ConnectionFailed, "sandbox unreachable: "+err.Error())
		}
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		upCh.Close()
		return
	}
	pipe(ch, reqs, upCh, upReqs)
}

// pipe copies between the client's channel ch and the agent's channel
// upCh. Exit status and exit signal are passed on only once all output
// before them has been, so a client never sees the status ahead of the
// last bytes.
func pipe(ch ssh.Channel, reqs <-chan *ssh.Request, upCh ssh.Channel, upReqs <-chan *ssh.Request) {
	outDone := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(ch, upCh)
		}()
		go func() {
			defer wg.Done()
			_, _ = io.Copy(ch.Stderr(), upCh.Stderr())
		}()
		wg.Wait()
		_ = ch.CloseWrite()
		close(outDone)
	}()
	go func() {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(upCh, ch)
		}()
		go func() {
			defer wg.Done()
			_, _ = io.Copy(upCh.Stderr(), ch.Stderr())
		}()
		wg.Wait()
		_ = upCh.CloseWrite()
	}()
	go func() {
		for r := range reqs {
			forwardChannelRequest(r, upCh)
		}
		// The client closed its channel.
		upCh.Close()
	}()
	for r := range upReqs {
		if r.Type == "exit-status" || r.Type == "exit-signal" {
			<-outDone
		}
		forwardChannelRequest(r, ch)
	}
	// The agent closed its channel.
	<-outDone
	ch.Close()
}
