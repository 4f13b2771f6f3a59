// Package guest is the server side of the guest agent (atelier-agent): the
// HTTP API the host drives over vsock or a unix socket (exec, files, git,
// supervised services and dev commands, PTY terminals, config and network
// injection) and the tiny PID 1 init for VM guests.
//
// The serve process is the parent of every command it runs and waits for
// each of them itself; nothing in it reaps with wait(-1). Orphans are the
// init's business (see init.go), so no exit code is ever stolen.
package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/vsock"

	"atelier/internal/agent"
)

// Version is the agent's version, set at link time
// (-ldflags "-X atelier/internal/guest.Version=...").
var Version = "dev"

// Options configures a Server. Zero values pick the defaults noted.
type Options struct {
	SandboxID string
	// FileRoots confine every file and git path; default ["/"] when the
	// agent runs as root (VM), else the user's home (mock runtime).
	FileRoots []string
	// WorkDir is the default cwd of commands; default the target user's
	// home, else the first file root.
	WorkDir string
	// LogDir holds one log per supervised process; default /var/log/sandbox.
	LogDir string
	// ConfigPath stores POST /config; default /etc/sandbox/config.json.
	ConfigPath string
	// EtcDir receives resolv.conf, hostname and hosts; default /etc.
	EtcDir string
	// ManageNetwork makes POST /network configure interfaces (VM runtime);
	// otherwise the values are only recorded.
	ManageNetwork bool
	// TerminalIdle closes terminals with no viewer and no output for this
	// long; default 30 min.
	TerminalIdle time.Duration
	// StopGrace is the default SIGTERM -> SIGKILL grace; default 5 s.
	StopGrace time.Duration
	// ManifestPath is the image manifest whose services the agent runs
	// (images: /etc/atelier/image.json); "" or a missing file: none.
	ManifestPath string
	// StateDir keeps the desired state of services across agent restarts
	// and sandbox stops (images: /var/lib/atelier); "" keeps it in memory.
	StateDir string
	// CredSocket is the guest-facing socket git's credential helper asks
	// (any guest user may connect; it serves POST /git/credential only);
	// default git-credential.sock beside ConfigPath.
	CredSocket string

	MaxConcurrentExec int   // default 64; further execs wait for a slot
	MaxProcesses      int   // supervised services + dev commands; default 64
	MaxTerminals      int   // default 32
	MaxFileBytes      int64 // largest file read or written; default 16 MiB
	LogMaxBytes       int64 // per-process log ring; default 8 MiB

	Logger *slog.Logger
}

func (o *Options) defaults() {
	if len(o.FileRoots) == 0 {
		if os.Geteuid() == 0 {
			o.FileRoots = []string{"/"}
		} else if h, err := os.UserHomeDir(); err == nil {
			o.FileRoots = []string{h}
		} else {
			o.FileRoots = []string{"/"}
		}
	}
	if o.LogDir == "" {
		o.LogDir = "/var/log/sandbox"
	}
	if o.ConfigPath == "" {
		o.ConfigPath = "/etc/sandbox/config.json"
	}
	if o.CredSocket == "" {
		o.CredSocket = filepath.Join(filepath.Dir(o.ConfigPath), "git-credential.sock")
	}
	if o.EtcDir == "" {
		o.EtcDir = "/etc"
	}
	if o.TerminalIdle <= 0 {
		o.TerminalIdle = 30 * time.Minute
	}
	if o.StopGrace <= 0 {
		o.StopGrace = agent.DefaultStopGrace
	}
	if o.MaxConcurrentExec <= 0 {
		o.MaxConcurrentExec = 64
	}
	if o.MaxProcesses <= 0 {
		o.MaxProcesses = 64
	}
	if o.MaxTerminals <= 0 {
		o.MaxTerminals = 32
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = 16 << 20
	}
	if o.LogMaxBytes <= 0 {
		o.LogMaxBytes = 8 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// maxJSONBody bounds ordinary JSON requests.
const maxJSONBody = 1 << 20

// Server is the agent's HTTP API.
type Server struct {
	opts    Options
	log     *slog.Logger
	started time.Time
	mux     *http.ServeMux
	fs      *fileRoots
	execSem chan struct{}
	sup     *supervisor
	terms   *terminals
	ssh     *sshServer
	cpu     cpuSampler
	creds   *credBroker

	mu      sync.Mutex
	network *agent.NetworkConfig

	// execs tracks running exec process groups so Shutdown can kill them.
	execMu sync.Mutex
	execs  map[int]struct{}

	cfgID atomic.Value // sandbox id from the stored config
	// cfgEnv is the stored config's "env": the workspace's variables and
	// secret variables, given to every process the agent starts (exec,
	// terminals, SSH sessions, services, dev commands) without a file a
	// shell sources (reference weak point 7).
	cfgEnv atomic.Pointer[map[string]string]

	closeOnce sync.Once
}

// NewServer builds the agent server. It starts the terminal idle sweep;
// Shutdown stops everything it started.
func NewServer(opts Options) *Server {
	opts.defaults()
	s := &Server{
		opts:    opts,
		log:     opts.Logger.With("sandbox_id", opts.SandboxID),
		started: time.Now(),
		mux:     http.NewServeMux(),
		fs:      newFileRoots(opts.FileRoots),
		execSem: make(chan struct{}, opts.MaxConcurrentExec),
		execs:   map[int]struct{}{},
		creds:   newCredBroker(),
	}
	s.loadConfigID()
	s.sup = newSupervisor(s)
	s.terms = newTerminals(s)
	s.ssh = newSSHServer(s)
	s.routes()
	// Before listening: the services start as early as the agent does,
	// and the host's first request already sees them.
	s.sup.boot()
	return s
}

// Handler returns the API handler.
func (s *Server) Handler() http.Handler { return s.mux }

// handlerFunc is a route that returns an error instead of writing one.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(pattern string, h handlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("agent handler panic", "pattern", pattern, "panic", v, "stack", string(debug.Stack()))
				writeProblem(w, http.StatusInternalServerError, agent.CodeInternal, "internal error", "")
			}
		}()
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *Server) routes() {
	s.handle("GET /health", s.health)
	s.handle("GET /metrics", s.metrics)
	s.handle("POST /exec", s.exec)
	s.handle("GET /exec/stream", s.execStream)

	s.handle("GET /files", s.readFile)
	s.handle("PUT /files", s.writeFile)
	s.handle("DELETE /files", s.removeFile)
	s.handle("GET /files/list", s.listFiles)
	s.handle("GET /files/stat", s.statFile)
	s.handle("POST /files/mkdir", s.mkdir)
	s.handle("POST /files/write-batch", s.writeBatch)
	s.handle("POST /files/delete-batch", s.deleteBatch)

	s.handle("POST /git/status", s.gitStatus)
	s.handle("POST /git/diff", s.gitDiff)
	s.handle("POST /git/commit", s.gitCommit)
	s.handle("POST /git/push", s.gitPush)
	s.handle("GET "+agent.GitCredentialRequestsPath, s.credRequests)
	s.handle("POST "+agent.GitCredentialAnswersPath, s.credAnswers)
	s.handle("GET "+agent.GitCredentialHelperPath, s.credHelper)

	s.handle("POST /services/apply", s.applyServices)
	s.handle("GET /image", s.imageInfo)
	for _, k := range []struct{ prefix, kind string }{{"/services", agent.KindService}, {"/dev", agent.KindDev}} {
		kind := k.kind
		s.handle("GET "+k.prefix, func(w http.ResponseWriter, r *http.Request) error { return s.listProcs(w, r, kind) })
		s.handle("GET "+k.prefix+"/{name}", func(w http.ResponseWriter, r *http.Request) error { return s.getProc(w, r, kind) })
		s.handle("POST "+k.prefix+"/{name}/start", func(w http.ResponseWriter, r *http.Request) error { return s.startProc(w, r, kind) })
		s.handle("POST "+k.prefix+"/{name}/stop", func(w http.ResponseWriter, r *http.Request) error { return s.stopProc(w, r, kind) })
		s.handle("POST "+k.prefix+"/{name}/restart", func(w http.ResponseWriter, r *http.Request) error { return s.restartProc(w, r, kind) })
		s.handle("GET "+k.prefix+"/{name}/logs", func(w http.ResponseWriter, r *http.Request) error { return s.procLogs(w, r, kind) })
	}

	s.handle("POST /terminals", s.createTerminal)
	s.handle("GET /terminals", s.listTerminals)
	s.handle("DELETE /terminals/{id}", s.deleteTerminal)
	s.handle("POST /terminals/{id}/resize", s.resizeTerminal)
	s.handle("GET /terminals/{id}/attach", s.attachTerminal)

	s.handle("GET "+agent.SSHPath, s.sshUpgrade)
	s.handle("GET "+agent.SSHChannelPath, s.sshChannelUpgrade)

	s.handle("GET /config", s.getConfig)
	s.handle("POST /config", s.putConfig)
	s.handle("POST /network", s.configureNetwork)
	s.handle("GET /network", s.getNetwork)

	s.handle("/", func(w http.ResponseWriter, r *http.Request) error {
		return errNotFound("no route %s %s", r.Method, r.URL.Path)
	})
}

// ServeUnix serves the API on a unix socket until ctx is done.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("chmod socket %s: %w", path, err)
	}
	s.log.Info("agent listening", "unix", path)
	return s.serve(ctx, ln)
}

// ServeVsock serves the API on a vsock port (any CID) until ctx is done.
func (s *Server) ServeVsock(ctx context.Context, port uint32) error {
	ln, err := vsock.Listen(port, nil)
	if err != nil {
		return fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	s.log.Info("agent listening", "vsock_port", port)
	return s.serve(ctx, ln)
}

// Serve serves the API on any listener until ctx is done (a later SSH or
// TCP listener plugs in here).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln)
}

func (s *Server) serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// The peer's address lets host-only routes refuse a vsock peer
		// that is not the host.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, c.RemoteAddr())
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve agent api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve agent api: %w", err)
	}
	return nil
}

// Shutdown stops every supervised process (with its grace), closes every
// terminal and kills running execs. Listeners are stopped by cancelling
// the Serve contexts.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		s.terms.closeAll()
		s.ssh.closeAll()
		err = s.sup.stopAll(ctx)
		s.execMu.Lock()
		for pgid := range s.execs {
			killGroup(pgid)
		}
		s.execMu.Unlock()
	})
	return err
}

func (s *Server) trackExec(pgid int, on bool) {
	s.execMu.Lock()
	defer s.execMu.Unlock()
	if on {
		s.execs[pgid] = struct{}{}
	} else {
		delete(s.execs, pgid)
	}
}

// apiError is an error with an HTTP status and a problem code.
type apiError struct {
	status int
	code   string
	detail string
	field  string
}

func (e *apiError) Error() string { return e.detail }

func errBadField(field, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, code: agent.CodeBadRequest, field: field, detail: field + ": " + fmt.Sprintf(format, args...)}
}

func errNotFound(format string, args ...any) error {
	return &apiError{status: http.StatusNotFound, code: agent.CodeNotFound, detail: fmt.Sprintf(format, args...)}
}

func errForbidden(format string, args ...any) error {
	return &apiError{status: http.StatusForbidden, code: agent.CodeForbidden, detail: fmt.Sprintf(format, args...)}
}

func errConflict(code, format string, args ...any) error {
	return &apiError{status: http.StatusConflict, code: code, detail: fmt.Sprintf(format, args...)}
}

func problemOf(err error) (int, agent.Problem) {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status, agent.Problem{Code: ae.code, Detail: ae.detail, Field: ae.field}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge, agent.Problem{Code: agent.CodeTooLarge, Detail: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
	}
	return http.StatusInternalServerError, agent.Problem{Code: agent.CodeInternal, Detail: err.Error()}
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, p := problemOf(err)
	if status >= 500 {
		s.log.Error("agent request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeProblem(w, status, p.Code, p.Detail, p.Field)
}

func writeProblem(w http.ResponseWriter, status int, code, detail, field string) {
	writeJSON(w, status, agent.Problem{Code: code, Detail: detail, Field: field})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
	return nil
}

// decode reads a JSON body bounded by limit into v. An empty body is
// accepted when allowEmpty (v keeps its zero value).
func decode(w http.ResponseWriter, r *http.Request, v any, limit int64, allowEmpty bool) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) && allowEmpty {
			return nil
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return errBadField(ute.Field, "must be %s", ute.Type)
		}
		return &apiError{status: http.StatusBadRequest, code: agent.CodeBadRequest, field: "body", detail: "body: invalid JSON: " + err.Error()}
	}
	if dec.More() {
		return &apiError{status: http.StatusBadRequest, code: agent.CodeBadRequest, field: "body", detail: "body: trailing data after JSON value"}
	}
	return nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, agent.Health{
		Status:        "healthy",
		Version:       Version,
		Protocol:      agent.ProtocolVersion,
		UptimeSeconds: time.Since(s.started).Seconds(),
		SandboxID:     s.sandboxID(),
	})
}
