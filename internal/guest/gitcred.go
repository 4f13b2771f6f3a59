package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"

	"atelier/internal/agent"
)

// Git credentials on demand. The guest cannot call the host, so the host
// is the initiator: the manager keeps a long poll open on the host-only
// GET /git/credential/requests and answers with POST
// /git/credential/answers. Guest processes reach the agent only through a
// separate socket (credSocket) whose handler serves POST /git/credential
// and nothing else; the token travels host -> agent memory -> the helper's
// stdout -> git, and is never written anywhere.
const (
	credAnswerTimeout = 20 * time.Second
	credMaxWait       = 30 * time.Second
	credMaxPending    = 32
)

type credPending struct {
	req     agent.GitCredentialRequest
	claimed bool
	answer  chan agent.GitCredentialAnswer
}

// credBroker holds the guest's pending credential requests until the
// host's poll takes them and its answer comes back.
type credBroker struct {
	mu      sync.Mutex
	seq     int
	pending map[string]*credPending
	wake    chan struct{} // closed and replaced when a request arrives
}

func newCredBroker() *credBroker {
	return &credBroker{pending: map[string]*credPending{}, wake: make(chan struct{})}
}

// ask queues one request and waits for the host's answer.
func (b *credBroker) ask(ctx context.Context, req agent.GitCredentialRequest) (agent.GitCredentialAnswer, error) {
	b.mu.Lock()
	if len(b.pending) >= credMaxPending {
		b.mu.Unlock()
		return agent.GitCredentialAnswer{}, errConflict(agent.CodeConflict, "too many credential requests waiting")
	}
	b.seq++
	req.ID = strconv.Itoa(b.seq)
	p := &credPending{req: req, answer: make(chan agent.GitCredentialAnswer, 1)}
	b.pending[req.ID] = p
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pending, req.ID)
		b.mu.Unlock()
	}()
	t := time.NewTimer(credAnswerTimeout)
	defer t.Stop()
	select {
	case a := <-p.answer:
		return a, nil
	case <-t.C:
		return agent.GitCredentialAnswer{}, &apiError{status: http.StatusGatewayTimeout, code: agent.CodeInternal,
			detail: "the host did not answer the credential request"}
	case <-ctx.Done():
		return agent.GitCredentialAnswer{}, ctx.Err()
	}
}

// take returns the unclaimed requests, waiting up to wait for one.
func (b *credBroker) take(ctx context.Context, wait time.Duration) []agent.GitCredentialRequest {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		b.mu.Lock()
		var out []agent.GitCredentialRequest
		for _, p := range b.pending {
			if !p.claimed {
				p.claimed = true
				out = append(out, p.req)
			}
		}
		wake := b.wake
		b.mu.Unlock()
		if len(out) > 0 {
			return out
		}
		select {
		case <-wake:
		case <-t.C:
			return []agent.GitCredentialRequest{}
		case <-ctx.Done():
			return []agent.GitCredentialRequest{}
		}
	}
}

func (b *credBroker) deliver(a agent.GitCredentialAnswer) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.pending[a.ID]
	if !ok || !p.claimed {
		return false
	}
	select {
	case p.answer <- a:
	default:
	}
	return true
}

// hostOnly refuses a host-only route on a connection the host cannot
// have made: the guest's credential socket never routes here at all, and
// on vsock only the host's CID (2) may call.
func hostOnly(r *http.Request) error {
	if a, ok := r.Context().Value(peerKey{}).(*vsock.Addr); ok && a.ContextID != vsock.Host {
		return errForbidden("%s is for the host only", r.URL.Path)
	}
	return nil
}

type peerKey struct{}

// credRequests is GET /git/credential/requests?waitMs=N (host only).
func (s *Server) credRequests(w http.ResponseWriter, r *http.Request) error {
	if err := hostOnly(r); err != nil {
		return err
	}
	wait := 25 * time.Second
	if v := r.URL.Query().Get("waitMs"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || time.Duration(n)*time.Millisecond > credMaxWait {
			return errBadField("waitMs", "must be in [0, %d]", credMaxWait.Milliseconds())
		}
		wait = time.Duration(n) * time.Millisecond
	}
	return writeJSON(w, http.StatusOK, agent.GitCredentialRequests{Requests: s.creds.take(r.Context(), wait)})
}

// credAnswers is POST /git/credential/answers (host only).
func (s *Server) credAnswers(w http.ResponseWriter, r *http.Request) error {
	if err := hostOnly(r); err != nil {
		return err
	}
	var req agent.GitCredentialAnswers
	if err := decode(w, r, &req, maxJSONBody, false); err != nil {
		return err
	}
	n := 0
	for _, a := range req.Answers {
		if s.creds.deliver(a) {
			n++
		}
	}
	return writeJSON(w, http.StatusOK, map[string]int{"delivered": n})
}

// credHelper is GET /git/credential/helper: the credential.helper value
// that runs this agent binary as git's helper against the guest socket.
func (s *Server) credHelper(w http.ResponseWriter, r *http.Request) error {
	if err := hostOnly(r); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	words := []string{exe}
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		// Embedded in the atelier binary (mock mode): "atelier agent ...".
		words = []string{exe, "agent"}
	}
	words = append(words, "git-credential", "--socket", s.opts.CredSocket)
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return writeJSON(w, http.StatusOK, agent.GitCredentialHelper{Helper: "!" + strings.Join(q, " ")})
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// guestCredential is POST /git/credential on the guest socket: a guest
// git's helper asks; the host decides.
func (s *Server) guestCredential(w http.ResponseWriter, r *http.Request) error {
	var req agent.GitCredentialRequest
	if err := decode(w, r, &req, 64<<10, false); err != nil {
		return err
	}
	if req.Protocol != "https" && req.Protocol != "http" {
		return errBadField("protocol", "must be https or http")
	}
	if req.Host == "" || strings.ContainsAny(req.Host, "/@\x00\r\n ") {
		return errBadField("host", "must be host[:port]")
	}
	req.ID = ""
	a, err := s.creds.ask(r.Context(), agent.GitCredentialRequest{Protocol: req.Protocol, Host: req.Host})
	if err != nil {
		return err
	}
	if a.Password == "" {
		msg := a.Error
		if msg == "" {
			msg = "no credential for " + req.Protocol + "://" + req.Host
		}
		return errForbidden("%s", msg)
	}
	// A line break would let an answer add keys to git's helper protocol.
	if strings.ContainsAny(a.Username+a.Password, "\r\n\x00") {
		return &apiError{status: http.StatusBadGateway, code: agent.CodeInternal, detail: "the host's credential is not on one line"}
	}
	return writeJSON(w, http.StatusOK, agent.GitCredentialAnswer{Username: a.Username, Password: a.Password})
}

// ServeCredSocket serves the guest-facing credential socket until ctx is
// done: any guest user may connect (mode 0666), and the only route is
// POST /git/credential.
func (s *Server) ServeCredSocket(ctx context.Context, path string) error {
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("credential socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return fmt.Errorf("chmod socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /git/credential", func(w http.ResponseWriter, r *http.Request) {
		if err := s.guestCredential(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, agent.CodeNotFound, "no route "+r.Method+" "+r.URL.Path+" on the guest credential socket", "")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
	go func() { <-ctx.Done(); hs.Close() }()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve credential socket: %w", err)
	}
	return nil
}

// gitCredentialMain is `atelier-agent git-credential [--socket P] get`:
// git's credential helper protocol on stdin/stdout. Only get is answered;
// store and erase are ignored, so nothing is ever kept.
func gitCredentialMain(args []string) int {
	sock := defaultCredSocket
	for len(args) > 1 && args[0] == "--socket" {
		sock, args = args[1], args[2:]
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: atelier-agent git-credential [--socket PATH] get|store|erase")
		return 2
	}
	if args[0] != "get" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	var req agent.GitCredentialRequest
	sc := bufio.NewScanner(io.LimitReader(os.Stdin, 64<<10))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "protocol":
			req.Protocol = v
		case "host":
			req.Host = v
		}
	}
	if req.Protocol != "https" && req.Protocol != "http" {
		return 0 // not ours to answer; git tries the next helper or fails
	}
	body, _ := json.Marshal(req)
	hc := &http.Client{Timeout: credAnswerTimeout + 5*time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	res, err := hc.Post("http://agent/git/credential", "application/json", strings.NewReader(string(body)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "atelier git-credential: %v\n", err)
		return 0
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if res.StatusCode != http.StatusOK {
		var p agent.Problem
		_ = json.Unmarshal(b, &p)
		fmt.Fprintf(os.Stderr, "atelier git-credential: %s\n", p.Detail)
		return 0
	}
	var a agent.GitCredentialAnswer
	if err := json.Unmarshal(b, &a); err != nil || a.Password == "" {
		return 0
	}
	fmt.Printf("username=%s\npassword=%s\n", a.Username, a.Password)
	return 0
}

// defaultCredSocket is where a VM or container guest's agent listens for
// the helper (beside the default config path).
const defaultCredSocket = "/etc/sandbox/git-credential.sock"
