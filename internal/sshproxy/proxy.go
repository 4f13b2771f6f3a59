// Package sshproxy is the SSH entry point of every sandbox:
// `ssh <sandboxId>@ssh.<baseDomain> -p 2222`. It authenticates the client's
// public key against the keys users registered (per connection, so a
// deleted or expired key stops working at once), checks that the key's
// owner is allowed to log in and owns the sandbox, then carries every
// channel the client opens to the sandbox agent on an agent stream of its
// own, in plain frames (decrypted once, here; see agent.SSHChannelPath).
// No guest port is exposed and no shared key reaches into sandboxes (the
// reference let any registered key into every sandbox through one shared
// VM key).
package sshproxy

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"atelier/internal/agent"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/ids"
	"atelier/internal/store"
)

// Tuning.
const (
	// lookupTimeout bounds the store lookups of one authentication attempt.
	lookupTimeout = 5 * time.Second
	// agentTimeout bounds reaching the agent's SSH server.
	agentTimeout = 15 * time.Second
	// refusedLinger is how long a client that was told why it cannot enter
	// may keep the connection open.
	refusedLinger = time.Minute
)

// Permission extensions recorded at authentication.
const (
	extUserID      = "atelier-user-id"
	extKeyID       = "atelier-key-id"
	extFingerprint = "atelier-fingerprint"
	extOwner       = "atelier-owner"
)

// Sandboxes is what the proxy needs from the lifecycle service.
type Sandboxes interface {
	Get(ctx context.Context, id string) (store.Sandbox, error)
	Agent(ctx context.Context, id string) (*agent.Client, error)
}

// ImageUser is the unprivileged user every sandbox image has (uid 1000,
// home /home/dev, sudo where the image ships it). SSH logs in as it, as
// VS Code and the terminal do: root logins stay closed, as in the images'
// own sshd.
const ImageUser = "dev"

// Eligibility decides whether a user may still use Atelier: the same
// check every other credential gets (auth.Service.Eligible).
type Eligibility interface {
	Eligible(ctx context.Context, u store.User) error
}

// Options configure a Proxy.
type Options struct {
	Config    *config.Config
	Store     *store.Store
	Sandboxes Sandboxes
	// HostKey is the proxy's host key; nil loads or creates
	// {dataDir}/ssh_host_ed25519_key.
	HostKey ssh.Signer
	// GuestUser is the unix user sessions run as in the guest; "" is the
	// agent's own user (root in the images). Production uses ImageUser.
	GuestUser string
	Log       *slog.Logger
	// Now is the clock for key expiry; default time.Now.
	Now func() time.Time
	// MaxPreAuth and MaxPreAuthPerAddr bound the connections that have not
	// finished authentication, in all and per client address; a connection
	// past either is closed as soon as it is accepted. Defaults
	// DefaultMaxPreAuth and DefaultMaxPreAuthPerAddr.
	MaxPreAuth, MaxPreAuthPerAddr int
	// HandshakeTimeout bounds key exchange and authentication; default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Access is asked at every authentication whether the key's owner may
	// still log in; nil builds an auth.Service over Config and Store. The
	// manager passes its own.
	Access Eligibility
}

// Proxy is the SSH proxy.
type Proxy struct {
	o    Options
	log  *slog.Logger
	base ssh.ServerConfig
	pre  *preAuth

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	// acceptErr is the last Accept failure, nil once one succeeds again.
	acceptErr error
}

// New builds the proxy; it binds nothing.
func New(o Options) (*Proxy, error) {
	if o.Config == nil || o.Store == nil || o.Sandboxes == nil {
		return nil, errors.New("ssh proxy: config, store and sandboxes are required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxPreAuth <= 0 {
		o.MaxPreAuth = DefaultMaxPreAuth
	}
	if o.MaxPreAuthPerAddr <= 0 {
		o.MaxPreAuthPerAddr = DefaultMaxPreAuthPerAddr
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.Access == nil {
		o.Access = auth.New(o.Config, o.Store, auth.WithLogger(o.Log))
	}
	log := o.Log.With("component", "sshproxy")
	if o.HostKey == nil {
		k, err := LoadOrCreateHostKey(filepath.Join(o.Config.Server.DataDir, HostKeyFile), log)
		if err != nil {
			return nil, err
		}
		o.HostKey = k
	}
	p := &Proxy{o: o, log: log, conns: map[net.Conn]struct{}{}, pre: newPreAuth(o.MaxPreAuth, o.MaxPreAuthPerAddr)}
	p.base = ssh.ServerConfig{ServerVersion: "SSH-2.0-atelier"}
	p.base.AddHostKey(o.HostKey)
	return p, nil
}

// HostKey is the public host key clients see.
func (p *Proxy) HostKey() ssh.PublicKey { return p.o.HostKey.PublicKey() }

// Serve accepts connections on ln until ctx is done, then closes ln and
// every connection and waits for their goroutines.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		p.closeAll()
	})
	defer stop()
	p.log.Info("ssh proxy listening", "addr", ln.Addr().String())
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		p.setAcceptErr(err)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				p.closeAll()
				p.wg.Wait()
				return nil
			}
			// Out of file descriptors and the like: wait, do not spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("ssh proxy accept", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			continue
		}
		backoff = 0
		key := addrKey(c.RemoteAddr())
		ok, warn, refused := p.pre.acquire(key)
		if !ok {
			// Closed before a goroutine or a byte is spent on it.
			c.Close()
			if warn {
				p.log.Warn("ssh proxy refusing connections: too many have not finished authentication",
					"remote", c.RemoteAddr().String(), "refused", refused, "max", p.o.MaxPreAuth, "max_per_address", p.o.MaxPreAuthPerAddr)
			}
			continue
		}
		if !p.track(c, true) {
			p.pre.release(key)
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, false)
			defer c.Close()
			var once sync.Once
			authed := func() { once.Do(func() { p.pre.release(key) }) }
			defer authed()
			p.handle(ctx, c, authed)
		}()
	}
}

func (p *Proxy) setAcceptErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.acceptErr = err
}

// Health is the proxy's part of /health/ready: it fails once the proxy has
// stopped, and while accepting connections fails (out of file descriptors).
func (p *Proxy) Health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return errors.New("stopped")
	case p.acceptErr != nil:
		return fmt.Errorf("cannot accept connections: %w", p.acceptErr)
	}
	return nil
}

func (p *Proxy) track(c net.Conn, on bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !on {
		delete(p.conns, c)
		return true
	}
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	p.closed = true
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// handle serves one client connection; authed is called once the
// handshake is over, whatever its outcome.
func (p *Proxy) handle(ctx context.Context, c net.Conn, authed func()) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(p.o.HandshakeTimeout))
	cfg := p.base
	var bannerOnce sync.Once
	var asked string // the sandbox id the client asked for, for the log
	cfg.PublicKeyCallback = func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		asked = meta.User()
		return p.authenticate(ctx, meta, key, &bannerOnce)
	}
	down, chans, reqs, err := ssh.NewServerConn(readBuffered(c), &cfg)
	authed()
	if err != nil {
		p.log.Info("ssh client not admitted", "sandbox_id", asked, "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	defer down.Close()
	_ = c.SetDeadline(time.Time{})
	id := down.User()
	perms := down.Permissions.Extensions
	log := p.log.With("sandbox_id", id, "user_id", perms[extUserID], "key_id", perms[extKeyID], "remote", c.RemoteAddr().String())

	cl, reason := p.admit(ctx, id, perms[extOwner] == "1")
	if reason != "" {
		log.Info("ssh session refused", "reason", reason)
		refuse(down, chans, reqs, reason)
		return
	}
	ctrl, err := p.dialAgent(ctx, cl)
	if err != nil {
		log.Warn("ssh: agent unreachable", "err", err)
		reason := fmt.Sprintf("sandbox %s is running but its agent did not answer; try again, or restart the sandbox", id)
		var ae *agent.Error
		if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
			reason = fmt.Sprintf("sandbox %s cannot log you in: %s", id, ae.Detail)
		}
		refuse(down, chans, reqs, reason)
		return
	}
	defer ctrl.Close()
	log.Info("ssh session opened", "fingerprint", perms[extFingerprint], "setup_ms", time.Since(start).Milliseconds())
	bridge(ctx, down, chans, reqs, cl, ctrl, p.o.GuestUser)
	log.Info("ssh session closed", "duration_s", int(time.Since(start).Seconds()))
}

// authenticate admits a key that is registered, not expired, and belongs to
// a user who may still use Atelier (auth.Service.Eligible, the check every
// credential gets). The decision is made per connection from the store, so
// revocation and expiry apply to the next connection at once. A key of an
// allowed user that does not own the sandbox is still admitted, so that
// after it has proven possession of the key the client is told why it
// cannot enter instead of a bare "Permission denied".
func (p *Proxy) authenticate(ctx context.Context, meta ssh.ConnMetadata, key ssh.PublicKey, banner *sync.Once) (*ssh.Permissions, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	fp := ssh.FingerprintSHA256(key)
	keys, err := p.o.Store.LookupSSHKeys(ctx, fp, p.o.Now())
	if err != nil {
		p.log.Error("ssh key lookup failed", "err", err)
		return nil, errors.New("key lookup failed")
	}
	wire := key.Marshal()
	type cand struct{ keyID, userID string }
	var cands []cand
	for _, k := range keys {
		stored, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.PublicKey))
		if err != nil || subtle.ConstantTimeCompare(stored.Marshal(), wire) != 1 {
			continue
		}
		u, err := p.o.Store.GetUser(ctx, k.UserID)
		if err != nil {
			continue
		}
		if err := p.o.Access.Eligible(ctx, u); err != nil {
			if !errors.Is(err, auth.ErrIneligible) {
				p.log.Warn("ssh: cannot decide whether a key's owner may log in", "user_id", u.ID, "err", err)
			}
			continue
		}
		cands = append(cands, cand{k.ID, k.UserID})
	}
	if len(cands) == 0 {
		msg := ""
		banner.Do(func() {
			msg = fmt.Sprintf("atelier: key %s is not registered to a user allowed to log in, or it expired or was deleted.\r\n"+
				"Register your public key at %s (POST /api/ssh-keys).\r\n", fp, p.o.Config.DashboardURL())
		})
		return nil, &ssh.BannerError{Err: errors.New("key not registered"), Message: msg}
	}
	chosen := cands[0]
	owner := false
	if id := meta.User(); ids.ValidSandboxID(id) {
		if sb, err := p.o.Sandboxes.Get(ctx, id); err == nil {
			for _, c := range cands {
				if c.userID == sb.OwnerID {
					chosen, owner = c, true
					break
				}
			}
		}
	}
	ext := map[string]string{extUserID: chosen.userID, extKeyID: chosen.keyID, extFingerprint: fp}
	if owner {
		ext[extOwner] = "1"
	}
	return &ssh.Permissions{Extensions: ext}, nil
}

// admit returns the running sandbox's agent, or the reason, worded for the
// person at the terminal, why there is no way in.
func (p *Proxy) admit(ctx context.Context, id string, owner bool) (*agent.Client, string) {
	cfg := p.o.Config
	if !ids.ValidSandboxID(id) {
		return nil, fmt.Sprintf("%q is not a sandbox id: connect with ssh <sandbox-id>@%s -p %d", id, cfg.Domain.SSH.Hostname, cfg.Domain.SSH.Port)
	}
	// Not found and not yours read the same: ids of other users' sandboxes
	// are nobody else's business.
	notYours := fmt.Sprintf("you have no sandbox %s (list yours with: atelier sandbox list)", id)
	if !owner {
		return nil, notYours
	}
	sb, err := p.o.Sandboxes.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notYours
	}
	if err != nil {
		p.log.Error("ssh: load sandbox", "sandbox_id", id, "err", err)
		return nil, "the manager could not load sandbox " + id + "; try again"
	}
	switch sb.Status {
	case store.StatusRunning:
		cl, err := p.o.Sandboxes.Agent(ctx, id)
		if err == nil {
			return cl, ""
		}
		if !errors.Is(err, store.ErrConflict) {
			p.log.Error("ssh: sandbox agent", "sandbox_id", id, "err", err)
			return nil, "sandbox " + id + " has no reachable agent"
		}
		return nil, "sandbox " + id + " stopped running just now; check it with: atelier sandbox get " + id
	case store.StatusStopped:
		return nil, fmt.Sprintf("sandbox %s is stopped: start it with `atelier sandbox start %s` (or from the dashboard), then connect again", id, id)
	case store.StatusCreating, store.StatusStarting:
		return nil, fmt.Sprintf("sandbox %s is %s: try again in a few seconds", id, sb.Status)
	case store.StatusStopping:
		return nil, fmt.Sprintf("sandbox %s is stopping: start it again with `atelier sandbox start %s` once it has stopped", id, id)
	case store.StatusError:
		msg := fmt.Sprintf("sandbox %s failed", id)
		if sb.Error != "" {
			msg += " (" + sb.Error + ")"
		}
		return nil, msg + ": restart it with `atelier sandbox restart " + id + "`"
	default:
		return nil, fmt.Sprintf("sandbox %s is %s", id, sb.Status)
	}
}

// dialAgent opens the "connection" stream that stands for the client's
// connection on the agent (see agent.SSHChannelPath): the agent checks the
// unix user once, and the stream's end tells the bridge the agent is gone.
func (p *Proxy) dialAgent(ctx context.Context, cl *agent.Client) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	q := url.Values{"type": {agent.SSHChanConnection}, "user": {p.o.GuestUser}}
	return cl.DialUpgrade(ctx, agent.SSHChannelPath+"?"+q.Encode(), agent.SSHChannelProtocol)
}

// refuse serves a connection whose sandbox cannot be entered: every session
// prints reason on stderr and exits with status 1, every other channel is
// rejected with reason, so `ssh`, `scp`, `sftp` and `ssh -L` all show it.
func refuse(down *ssh.ServerConn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request, reason string) {
	go ssh.DiscardRequests(reqs)
	t := time.AfterFunc(refusedLinger, func() { down.Close() })
	defer t.Stop()
	var wg sync.WaitGroup
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.Prohibited, "atelier: "+reason)
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			eol := "\n"
			for req := range creqs {
				switch req.Type {
				case "pty-req":
					eol = "\r\n"
					_ = req.Reply(true, nil)
				case "env", "window-change":
					_ = req.Reply(true, nil)
				case "shell", "exec", "subsystem":
					_ = req.Reply(true, nil)
					_, _ = ch.Stderr().Write([]byte("atelier: " + reason + eol))
					_ = ch.CloseWrite()
					_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{1}))
					_ = ch.Close()
				default:
					if req.WantReply {
						_ = req.Reply(false, nil)
					}
				}
			}
			ch.Close()
		}()
	}
	wg.Wait()
}

// readBuffered reads the client's connection through a large buffer.
// x/crypto/ssh reads each packet in pieces (its own buffer is 4 KiB), and
// on loopback or a fast link every piece was a read system call of its
// own: the proxy's largest cost after decryption.
func readBuffered(c net.Conn) net.Conn {
	return agent.BufferedConn(c, bufio.NewReaderSize(c, clientReadBuffer))
}

// clientReadBuffer holds several 32 KiB SSH packets.
const clientReadBuffer = 128 << 10
