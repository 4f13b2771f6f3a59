package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// SSH tuning.
const (
	// sshDialTimeout bounds a direct-tcpip dial inside the sandbox.
	sshDialTimeout = 10 * time.Second
	// sshHandshakeTimeout bounds the SSH handshake on an upgraded stream.
	sshHandshakeTimeout = 30 * time.Second
)

// sshServer is the agent's SSH server. It has no listener: the manager's
// SSH proxy reaches it by upgrading an agent API connection (GET /ssh), so
// no guest port is exposed and the "none" authentication it accepts is only
// ever offered to whoever can open an agent connection, i.e. the manager.
// The host key is made per agent start; the proxy does not pin it, since
// users only ever see the proxy's own key.
type sshServer struct {
	s *Server

	cfgOnce sync.Once
	cfg     *ssh.ServerConfig
	cfgErr  error

	mu     sync.Mutex
	conns  map[io.Closer]struct{} // SSH connections and bridged channels
	closed bool
}

func newSSHServer(s *Server) *sshServer {
	return &sshServer{s: s, conns: map[io.Closer]struct{}{}}
}

func (ss *sshServer) config() (*ssh.ServerConfig, error) {
	ss.cfgOnce.Do(func() {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			ss.cfgErr = fmt.Errorf("generate ssh host key: %w", err)
			return
		}
		signer, err := ssh.NewSignerFromKey(priv)
		if err != nil {
			ss.cfgErr = fmt.Errorf("ssh host key signer: %w", err)
			return
		}
		cfg := &ssh.ServerConfig{
			NoClientAuth: true,
			// The requested name selects the unix user; "" is the agent's
			// own user. An unknown user fails authentication so the proxy
			// can say why.
			NoClientAuthCallback: func(c ssh.ConnMetadata) (*ssh.Permissions, error) {
				if _, err := resolveUser("user", c.User()); err != nil {
					return nil, err
				}
				return nil, nil
			},
			ServerVersion: "SSH-2.0-atelier-agent",
		}
		cfg.AddHostKey(signer)
		ss.cfg = cfg
	})
	return ss.cfg, ss.cfgErr
}

// closeAll drops every SSH connection and bridged channel; their sessions
// then kill their process groups.
func (ss *sshServer) closeAll() {
	ss.mu.Lock()
	ss.closed = true
	conns := make([]io.Closer, 0, len(ss.conns))
	for c := range ss.conns {
		conns = append(conns, c)
	}
	ss.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (ss *sshServer) track(c io.Closer, on bool) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if on {
		if ss.closed {
			return false
		}
		ss.conns[c] = struct{}{}
	} else {
		delete(ss.conns, c)
	}
	return true
}

// headerHas reports whether a comma-separated header holds token.
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// sshUpgrade is GET /ssh: it switches the connection to the SSH protocol
// and serves one SSH connection on it until either side closes.
func (s *Server) sshUpgrade(w http.ResponseWriter, r *http.Request) error {
	cfg, err := s.ssh.config()
	if err != nil {
		return err
	}
	conn, err := upgrade(w, r, agent.SSHProtocol)
	if conn == nil {
		return err
	}
	s.ssh.serveConn(conn, cfg)
	return nil
}

// upgrade answers 101 Switching Protocols to proto and hands over the
// connection. A request that did not ask for proto gets 426 as the error;
// a nil connection with a nil error means the client is already gone.
func upgrade(w http.ResponseWriter, r *http.Request, proto string) (net.Conn, error) {
	if !headerHas(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), proto) {
		w.Header().Set("Upgrade", proto)
		w.Header().Set("Connection", "Upgrade")
		return nil, &apiError{status: http.StatusUpgradeRequired, code: agent.CodeBadRequest,
			detail: "GET " + r.URL.Path + " needs Connection: Upgrade and Upgrade: " + proto}
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("hijack %s connection: %w", proto, err)
	}
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n"); err != nil {
		conn.Close()
		return nil, nil
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, nil
	}
	if brw.Reader.Buffered() > 0 {
		// Bytes the HTTP server read ahead before the upgrade.
		return agent.BufferedConn(conn, brw.Reader), nil
	}
	return conn, nil
}

func (ss *sshServer) serveConn(c net.Conn, cfg *ssh.ServerConfig) {
	_ = c.SetDeadline(time.Now().Add(sshHandshakeTimeout))
	sconn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		ss.s.log.Debug("ssh handshake failed", "err", err)
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	if !ss.track(sconn, true) {
		sconn.Close()
		return
	}
	defer ss.track(sconn, false)
	defer sconn.Close()
	// Remote forwarding (tcpip-forward) is not offered; every global request
	// is answered "no".
	go ssh.DiscardRequests(reqs)
	ss.s.log.Info("ssh connection", "user", sconn.User())

	var wg sync.WaitGroup
	sessions := make(chan struct{}, agent.SSHMaxSessions)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			select {
			case sessions <- struct{}{}:
			default:
				_ = nc.Reject(ssh.ResourceShortage, fmt.Sprintf("at most %d sessions per connection", agent.SSHMaxSessions))
				continue
			}
			ch, reqs, err := nc.Accept()
			if err != nil {
				<-sessions
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sessions }()
				ss.session(sconn.User(), ch, sshRequests(reqs))
			}()
		case "direct-tcpip":
			var p agent.ForwardTarget
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc, err := dialForward(p)
				if err != nil {
					_ = nc.Reject(ssh.ConnectionFailed, err.Error())
					return
				}
				ch, reqs, err := nc.Accept()
				if err != nil {
					tc.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				forward(ch, tc)
			}()
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
	wg.Wait()
}

// dialForward connects to a direct-tcpip target from inside the sandbox;
// the error is worded for the client.
func dialForward(p agent.ForwardTarget) (net.Conn, error) {
	if !p.Valid() {
		return nil, errors.New("malformed direct-tcpip request")
	}
	addr := net.JoinHostPort(p.Host, strconv.FormatUint(uint64(p.Port), 10))
	tc, err := net.DialTimeout("tcp", addr, sshDialTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return tc, nil
}

// forward is local port forwarding (ssh -L) once the target is connected:
// it copies both ways, half-closing as each side ends.
func forward(ch ssh.Channel, tc net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(tc, ch)
		if cw, ok := tc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(ch, tc)
		_ = ch.CloseWrite()
	}()
	wg.Wait()
	tc.Close()
	ch.Close()
}

// chanRequest is a channel request from either transport: the agent's own
// SSH server or a bridged channel.
type chanRequest struct {
	Type      string
	WantReply bool
	Payload   []byte
	reply     func(ok bool) error
}

// Reply answers the request if it wanted an answer.
func (r *chanRequest) Reply(ok bool) error {
	if !r.WantReply || r.reply == nil {
		return nil
	}
	return r.reply(ok)
}

// sshRequests adapts an SSH channel's requests.
func sshRequests(in <-chan *ssh.Request) <-chan *chanRequest {
	out := make(chan *chanRequest)
	go func() {
		defer close(out)
		for r := range in {
			out <- &chanRequest{Type: r.Type, WantReply: r.WantReply, Payload: r.Payload,
				reply: func(ok bool) error { return r.Reply(ok, nil) }}
		}
	}()
	return out
}

// sshSession is one session channel: at most one program (shell, exec or
// subsystem), with an optional PTY.
type sshSession struct {
	ss   *sshServer
	user string
	ch   ssh.Channel

	env     map[string]string
	ptyTerm string
	win     pty.Winsize
	hasPTY  bool
	started bool

	mu   sync.Mutex
	pgid int      // the program's process group once started
	ptmx *os.File // the PTY master when hasPTY
}

// Payloads of the session requests (RFC 4254 section 6).
type (
	ptyReqMsg struct {
		Term     string
		Cols     uint32
		Rows     uint32
		WidthPx  uint32
		HeightPx uint32
		Modes    string
	}
	winChangeMsg struct {
		Cols     uint32
		Rows     uint32
		WidthPx  uint32
		HeightPx uint32
	}
	envMsg struct {
		Name  string
		Value string
	}
	commandMsg struct{ Command string }
	signalMsg  struct{ Signal string }
	exitStatus struct{ Status uint32 }
	exitSignal struct {
		Signal     string
		CoreDumped bool
		Message    string
		Lang       string
	}
)

func clampDim(v uint32) uint16 {
	return uint16(min(v, uint32(agent.MaxTerminalDimension)))
}

func (ss *sshServer) session(user string, ch ssh.Channel, reqs <-chan *chanRequest) {
	sess := &sshSession{ss: ss, user: user, ch: ch, env: map[string]string{},
		win: pty.Winsize{Cols: agent.DefaultTerminalCols, Rows: agent.DefaultTerminalRows}}
	done := make(chan struct{})
	for req := range reqs {
		ok := false
		switch req.Type {
		case "pty-req":
			var m ptyReqMsg
			if sess.started || ssh.Unmarshal(req.Payload, &m) != nil {
				break
			}
			sess.hasPTY, sess.ptyTerm = true, m.Term
			if m.Cols > 0 && m.Rows > 0 {
				sess.win = pty.Winsize{Cols: clampDim(m.Cols), Rows: clampDim(m.Rows), X: uint16(m.WidthPx), Y: uint16(m.HeightPx)}
			}
			ok = true
		case "env":
			var m envMsg
			if sess.started || ssh.Unmarshal(req.Payload, &m) != nil || m.Name == "" ||
				strings.ContainsAny(m.Name, "=\x00") || strings.IndexByte(m.Value, 0) >= 0 {
				break
			}
			sess.env[m.Name] = m.Value
			ok = true
		case "shell", "exec", "subsystem":
			if sess.started {
				break
			}
			sess.started = true
			run, err := sess.prepare(req)
			if err != nil {
				// The reason goes to the client's stderr; a bare "request
				// failed" would not say what was wrong.
				_, _ = fmt.Fprintf(ch.Stderr(), "atelier-agent: %v\r\n", err)
				run = func() (int, string, bool) { return -1, "", false }
			} else {
				ok = true
			}
			_ = req.Reply(ok)
			go func() {
				defer close(done)
				sess.finish(run())
			}()
			continue
		case "window-change":
			var m winChangeMsg
			if ssh.Unmarshal(req.Payload, &m) != nil {
				break
			}
			sess.resize(m)
			ok = true
		case "signal":
			var m signalMsg
			if ssh.Unmarshal(req.Payload, &m) != nil {
				break
			}
			ok = sess.signal(m.Signal) == nil
		}
		_ = req.Reply(ok)
	}
	// The client closed the channel (or the connection dropped): nothing
	// the session started may outlive it.
	sess.killGroup()
	if sess.started {
		<-done
	}
	ch.Close()
}

// prepare validates the request and returns the function that runs it to
// its end, reporting (exit code, signal name, core dumped).
func (sess *sshSession) prepare(req *chanRequest) (func() (int, string, bool), error) {
	s := sess.ss.s
	id, err := resolveUser("user", sess.user)
	if err != nil {
		return nil, err
	}
	shell := defaultShell(id)
	var argv []string
	switch req.Type {
	case "shell":
		argv = []string{shell, "-l"}
	case "exec":
		var m commandMsg
		if err := ssh.Unmarshal(req.Payload, &m); err != nil {
			return nil, errors.New("malformed exec request")
		}
		argv = []string{shell, "-c", m.Command}
	case "subsystem":
		var m commandMsg
		if err := ssh.Unmarshal(req.Payload, &m); err != nil {
			return nil, errors.New("malformed subsystem request")
		}
		if m.Command != "sftp" {
			return nil, fmt.Errorf("unknown subsystem %q", m.Command)
		}
		if id.cred == nil {
			dir := s.defaultDir(id)
			return func() (int, string, bool) { return sess.sftpInProcess(dir) }, nil
		}
		// Another user's files must be served with that user's rights: run
		// the SFTP server as a child with its credentials.
		self, err := selfCommand()
		if err != nil {
			return nil, err
		}
		argv = append(self, "sftp-server")
	}
	env := map[string]string{}
	for k, v := range sess.env {
		env[k] = v
	}
	if sess.hasPTY && sess.ptyTerm != "" {
		env["TERM"] = sess.ptyTerm
	}
	p, err := s.prepare(commandSpec{argv: argv, env: env, user: sess.user})
	if err != nil {
		return nil, err
	}
	if sess.hasPTY && req.Type != "subsystem" {
		return sess.startPTY(p)
	}
	return sess.startPipes(p)
}

// startPipes runs a command with the channel as stdin, stdout and stderr.
// stdin goes through an *os.File so Wait never waits on the client's input.
func (sess *sshSession) startPipes(p *prepared) (func() (int, string, bool), error) {
	cmd := p.command()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	cmd.Stdin = stdinR
	cmd.Stdout = sess.ch
	cmd.Stderr = sess.ch.Stderr()
	cmd.WaitDelay = pipeGrace
	if err := cmd.Start(); err != nil {
		stdinR.Close()
		stdinW.Close()
		return nil, fmt.Errorf("start %s: %w", p.argv[0], err)
	}
	stdinR.Close()
	sess.setGroup(cmd.Process.Pid, nil)
	go func() {
		_, _ = io.Copy(stdinW, sess.ch)
		stdinW.Close()
	}()
	return func() (int, string, bool) {
		_ = cmd.Wait()
		return waitResult(cmd.ProcessState)
	}, nil
}

// startPTY runs a command on a new PTY as a session leader, like a login.
func (sess *sshSession) startPTY(p *prepared) (func() (int, string, bool), error) {
	cmd := &exec.Cmd{Path: p.path, Args: p.argv, Env: p.env, Dir: p.dir}
	attrs := &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: p.id.cred, Pdeathsig: syscall.SIGKILL}
	win := sess.win
	ptmx, err := pty.StartWithAttrs(cmd, &win, attrs)
	if err != nil {
		return nil, fmt.Errorf("start %s on a pty: %w", p.argv[0], err)
	}
	sess.setGroup(cmd.Process.Pid, ptmx)
	go func() { _, _ = io.Copy(ptmx, sess.ch) }()
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		_, _ = io.Copy(sess.ch, ptmx)
	}()
	return func() (int, string, bool) {
		_ = cmd.Wait()
		// The PTY reads EIO once every holder of the slave is gone; a
		// background job that keeps it open gets a short grace only.
		select {
		case <-outDone:
		case <-time.After(pipeGrace):
		}
		// Under the lock: resize and signal use the master's fd.
		sess.mu.Lock()
		ptmx.Close()
		sess.ptmx = nil
		sess.mu.Unlock()
		<-outDone
		return waitResult(cmd.ProcessState)
	}, nil
}

// sftpInProcess serves SFTP as the agent's own user on the channel.
func (sess *sshSession) sftpInProcess(dir string) (int, string, bool) {
	// The server closes what it serves on; the channel must stay open for
	// the exit status that follows.
	srv, err := sftp.NewServer(keepOpen{sess.ch}, sftp.WithServerWorkingDirectory(dir))
	if err != nil {
		_, _ = fmt.Fprintf(sess.ch.Stderr(), "atelier-agent: sftp: %v\r\n", err)
		return 1, "", false
	}
	err = srv.Serve()
	_ = srv.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		sess.ss.s.log.Debug("sftp session ended", "err", err)
		return 1, "", false
	}
	return 0, "", false
}

// keepOpen hides Close from a server that closes what it serves on.
type keepOpen struct{ io.ReadWriter }

func (keepOpen) Close() error { return nil }

func (sess *sshSession) setGroup(pgid int, ptmx *os.File) {
	sess.mu.Lock()
	sess.pgid, sess.ptmx = pgid, ptmx
	sess.mu.Unlock()
	sess.ss.s.trackExec(pgid, true)
}

func (sess *sshSession) killGroup() {
	sess.mu.Lock()
	pgid := sess.pgid
	sess.mu.Unlock()
	killGroup(pgid)
}

func (sess *sshSession) resize(m winChangeMsg) {
	if m.Cols == 0 || m.Rows == 0 {
		return
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.win = pty.Winsize{Cols: clampDim(m.Cols), Rows: clampDim(m.Rows), X: uint16(m.WidthPx), Y: uint16(m.HeightPx)}
	if sess.ptmx != nil {
		// TIOCSWINSZ makes the kernel send SIGWINCH to the foreground group.
		_ = pty.Setsize(sess.ptmx, &sess.win)
	}
}

// signal delivers an RFC 4254 signal name ("INT", "TERM"...) to the
// program: the PTY's foreground job when there is one, else its group.
func (sess *sshSession) signal(name string) error {
	sig := unix.SignalNum("SIG" + name)
	if sig == 0 {
		return fmt.Errorf("unknown signal %q", name)
	}
	sess.mu.Lock()
	pgid := sess.pgid
	if sess.ptmx != nil {
		if fg, err := unix.IoctlGetInt(int(sess.ptmx.Fd()), unix.TIOCGPGRP); err == nil && fg > 1 {
			pgid = fg
		}
	}
	sess.mu.Unlock()
	if pgid == 0 {
		return errors.New("nothing started")
	}
	return signalGroup(pgid, sig)
}

// finish reports how the program ended (exit-status, or exit-signal when
// a signal killed it) after the output's EOF, then closes the channel and
// kills what is left of the group.
func (sess *sshSession) finish(code int, sig string, core bool) {
	sess.killGroup()
	sess.mu.Lock()
	pgid := sess.pgid
	sess.mu.Unlock()
	if pgid > 0 {
		sess.ss.s.trackExec(pgid, false)
	}
	_ = sess.ch.CloseWrite()
	if sig != "" {
		_, _ = sess.ch.SendRequest("exit-signal", false, ssh.Marshal(&exitSignal{Signal: strings.TrimPrefix(sig, "SIG"), CoreDumped: core}))
	} else {
		if code < 0 {
			code = 255
		}
		_, _ = sess.ch.SendRequest("exit-status", false, ssh.Marshal(&exitStatus{Status: uint32(code)}))
	}
	_ = sess.ch.Close()
}

// waitResult is the exact exit code, or the signal that ended the process.
func waitResult(ps *os.ProcessState) (int, string, bool) {
	if ps == nil {
		return -1, "", false
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), unix.SignalName(ws.Signal()), ws.CoreDump()
	}
	return ps.ExitCode(), "", false
}

// selfCommand is the argv that runs this binary's Main; a variable so a
// test binary can point it at itself.
var selfCommand = defaultSelfCommand

// defaultSelfCommand is the executable plus the words before "serve"
// ("atelier agent serve" embeds the agent).
func defaultSelfCommand() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	out := []string{exe}
	for i, a := range os.Args[1:] {
		if a == "serve" {
			out = append(out, os.Args[1:1+i]...)
			break
		}
	}
	return out, nil
}

// sftpServerMain is "atelier-agent sftp-server": SFTP on stdin/stdout in
// the current directory, run by the SSH server as the session's user.
func sftpServerMain() int {
	dir, _ := os.Getwd()
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{os.Stdin, os.Stdout}, sftp.WithServerWorkingDirectory(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sftp-server:", err)
		return 1
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "sftp-server:", err)
		return 1
	}
	return 0
}
