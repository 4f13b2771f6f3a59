// Package server wires the manager together: store, services, API, the TCP
// listener and the root-only unix socket, and a graceful shutdown that drains
// requests without touching running sandboxes.
package server

import (
	"atelier/internal/logkeeper"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"atelier/internal/api"
	"atelier/internal/auth"
	"atelier/internal/config"
	"atelier/internal/edge"
	"atelier/internal/events"
	"atelier/internal/github"
	"atelier/internal/guestfiles"
	"atelier/internal/image/catalog"
	"atelier/internal/metrics"
	"atelier/internal/network"
	netmock "atelier/internal/network/mock"
	"atelier/internal/registry"
	"atelier/internal/runtime/container"
	"atelier/internal/runtime/kubernetes"
	"atelier/internal/runtime/process"
	"atelier/internal/sandbox"
	"atelier/internal/sshproxy"
	"atelier/internal/storage/file"
	stmock "atelier/internal/storage/mock"
	"atelier/internal/store"
	"atelier/internal/workspace"
)

// Version is set at build time with -ldflags "-X atelier/internal/server.Version=...".
var Version = "dev"

// Server is a running manager.
type Server struct {
	Config    *config.Config
	Store     *store.Store
	Sandboxes *sandbox.Service
	Auth      *auth.Service
	Bus       *events.Bus
	API       *api.Server
	Edge      *edge.Edge
	Log       *slog.Logger
	Registry  *registry.Service
	SSHProxy  *sshproxy.Proxy
	Images    *catalog.Catalog

	tcp      net.Listener
	unix     net.Listener
	httpSrv  *http.Server
	unixSrv  *http.Server
	bg       sync.WaitGroup
	cancelBG context.CancelFunc

	reconcileEvery time.Duration
	timeouts       HTTPTimeouts
	health         health
	// policy is the cluster's NetworkPolicy check (kubernetes runtime).
	policy *policyCheck

	// Replicas on a shared store: see replicas.go.
	replicaID string
	leaderTTL time.Duration
	leading   atomic.Bool
	// leaderLock is where the lease lives (see LeaderLock).
	leaderLock LeaderLock
	// passCancel ends the leader's reconciler pass in progress.
	passCancel atomic.Pointer[context.CancelFunc]

	// Prebuilds builds workspaces' prebuilds and checks them for staleness.
	Prebuilds *workspace.Prebuilds
	// GitCredentials answers guest git's credential requests on demand.
	GitCredentials *workspace.CredentialBroker
	// Provisioner sets up sandboxes of workspaces.
	Provisioner *workspace.Provisioner
}

// Options adjust a server for tests.
type Options struct {
	Log        *slog.Logger
	Drivers    *sandbox.Drivers // nil: chosen from the config
	AuthOpts   []auth.Option
	NoUnixSock bool
	// Network and Container adjust the production drivers (tests point them
	// at namespaces they created).
	Network   func(*network.Options)
	Container func(*container.Options)
	// Kubernetes adjusts the kubernetes runtime's driver (tests reach a
	// test cluster's pod network through its namespace with Dial, which
	// the edge then uses too).
	Kubernetes func(*kubernetes.Options)
	// Registry adjusts the npm cache's supervisor (tests run it in their
	// namespace with their own uplink).
	Registry func(*registry.Options)
	// ReconcileEvery is the reconciler's period (default 30 s).
	ReconcileEvery time.Duration
	// HTTPTimeouts of the API listeners; zero fields take DefaultHTTPTimeouts.
	HTTPTimeouts HTTPTimeouts
	// LeaderTTL is the leader lease of replicas on Postgres (default
	// DefaultLeaderTTL).
	LeaderTTL time.Duration
	// LeaderLock holds the leader lease of replicas on Postgres; nil: a
	// Kubernetes Lease with the kubernetes runtime, else the store's row.
	LeaderLock LeaderLock
}

// SandboxLogs are the keepers of the sandboxes' logs, with the config's
// limits (sandbox.logMaxBytes, sandbox.logKeep); each is this binary run as
// the hidden `atelier log-keeper`.
func SandboxLogs(cfg *config.Config, log *slog.Logger) (*logkeeper.Keepers, error) {
	return logkeeper.New(logkeeper.Options{MaxBytes: int64(cfg.Sandbox.LogMaxBytes), Keep: cfg.Sandbox.LogKeep, Log: log})
}

// mockDrivers are mock mode's: the real agent as a local process, network
// and volumes in memory.
func mockDrivers(cfg *config.Config) (sandbox.Drivers, error) {
	{
		// The real agent, embedded in this binary, runs as a local process per
		// sandbox; network and volumes stay in memory.
		exe, err := os.Executable()
		if err != nil {
			return sandbox.Drivers{}, fmt.Errorf("find own executable for the mock agent: %w", err)
		}
		logs, err := SandboxLogs(cfg, nil)
		if err != nil {
			return sandbox.Drivers{}, err
		}
		rt, err := process.New(process.Options{
			Logs:      logs,
			Command:   []string{exe, "agent"},
			StateDir:  filepath.Join(cfg.Sandbox.StateDir, "mock"),
			SocketDir: filepath.Join(cfg.Sandbox.StateDir, "sockets"),
		})
		if err != nil {
			return sandbox.Drivers{}, err
		}
		// Mock mode has one image, the default: a create naming another is
		// refused (400 on image) as production refuses an image it lacks,
		// instead of making a sandbox that has nothing of that image.
		vols := stmock.New(filepath.Join(cfg.Sandbox.StateDir, "overlays"))
		vols.SetImageSize(cfg.Sandbox.DefaultImage, 0)
		return sandbox.Drivers{
			Runtime: rt,
			Network: netmock.New(),
			Volumes: vols,
		}, nil
	}
}

// New opens the store and builds every service; it binds nothing yet.
func New(ctx context.Context, cfg *config.Config, opts Options) (*Server, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = bindConfig(cfg, log)
	drv := opts.Drivers
	var inv *sandbox.Inventory
	var reports api.HostReports
	if drv == nil && cfg.Server.Mode == config.ModeMock {
		d, err := mockDrivers(cfg)
		if err != nil {
			return nil, err
		}
		drv = &d
		if lister, ok := d.Runtime.(interface {
			List(context.Context) ([]string, error)
		}); ok {
			inv = &sandbox.Inventory{Runtimes: lister.List}
		}
	} else if drv == nil && cfg.Sandbox.Runtime == "kubernetes" {
		d, i, r, err := kubeDrivers(ctx, cfg, opts, log)
		if err != nil {
			return nil, err
		}
		drv, inv, reports = &d, &i, r
	} else if drv == nil {
		d, i, r, err := hostDrivers(ctx, cfg, opts, log)
		if err != nil {
			return nil, err
		}
		drv, inv, reports = &d, &i, r
	}
	if reports == nil {
		reports = mockReports{cfg: cfg, drv: *drv}
	}
	st, err := store.Open(ctx, cfg.Server.DataDir, store.WithLogger(log), store.WithDatabaseURL(cfg.Advanced.Server.Database.URL))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	m := metrics.New()
	bus := events.New(st, log)
	sbx := sandbox.New(cfg, st, bus, m, *drv, log)
	if inv != nil {
		sbx.SetInventory(*inv)
	}
	var policy *policyCheck
	if kr, ok := reports.(kubeReports); ok {
		policy = kr.policy
		sbx.SetAdmission(policy.admit)
	}
	reg, sup, err := newRegistry(ctx, cfg, opts, st, sbx, *drv, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	sbx.AddHooks(reg.Hooks())
	// One auth service answers every credential: API, edge host cookies, SSH keys.
	box, err := openSecrets(ctx, cfg, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	au := auth.New(cfg, st, append([]auth.Option{auth.WithLogger(log), auth.WithSecrets(box)}, opts.AuthOpts...)...)
	guestUser := sshproxy.ImageUser
	if cfg.Server.Mode == config.ModeMock {
		guestUser = "" // mock guests are the developer's own processes
	}
	sp, err := sshproxy.New(sshproxy.Options{Config: cfg, Store: st, Sandboxes: sbx, GuestUser: guestUser, Log: log, Access: au})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("ssh proxy: %w", err)
	}
	ed, err := newEdge(cfg, st, bus, au, opts, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	sbx.AddHooks(ed.Hooks())
	wss := workspace.New(st, box, log)
	if err := setGitHub(cfg, wss); err != nil {
		st.Close()
		return nil, err
	}
	prov := newProvisioner(wss, st, sbx, ed, guestUser, log)
	prov.NoPrebuildStart = cfg.Server.Mode == config.ModeMock
	prov.Pull = &workspace.Puller{Workspaces: wss, User: guestUser, Wait: sbx.Wait, Agent: sbx.Agent, Log: log,
		Publish: func(ctx context.Context, typ, id string, data any) error {
			_, err := bus.Publish(ctx, typ, id, data)
			return err
		}}
	prov.NpmRegistry = func() string {
		if sup != nil && reg.Settings().Enabled && sup.Running() {
			return sup.URL()
		}
		return ""
	}
	sbx.SetProvisioner(prov)
	sbx.SetConfigPusher(&guestfiles.Pusher{Store: st, User: guestUser, Log: log})
	pbs := workspace.NewPrebuilds(wss, st, sbx, guestUser, log)
	// The starting page of a tool host names the service it waits for.
	ed.SetServices(sbx)
	every := opts.ReconcileEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	s := &Server{Config: cfg, Store: st, Sandboxes: sbx, Auth: au, Bus: bus, Log: log, Registry: reg, SSHProxy: sp, Edge: ed, reconcileEvery: every,
		timeouts: opts.HTTPTimeouts.withDefaults(), replicaID: newReplicaID(), leaderTTL: opts.LeaderTTL, policy: policy}
	if s.leaderTTL <= 0 {
		s.leaderTTL = DefaultLeaderTTL
	}
	if s.replicated() {
		s.leaderLock = opts.LeaderLock
		if s.leaderLock == nil {
			if s.leaderLock, err = newLeaderLock(cfg, st); err != nil {
				st.Close()
				return nil, fmt.Errorf("leader lease: %w", err)
			}
		}
		sbx.SetShared(s.leaderTTL)
		bus.SetLeader(s.Leading)
		pbs.Shared, pbs.Leading = s.leaderTTL, s.Leading
	}
	s.health.registry = sup
	s.Prebuilds = pbs
	s.GitCredentials = &workspace.CredentialBroker{Workspaces: wss, Store: st, Agent: sbx.Agent, Log: log, Leading: s.Leading}
	s.Provisioner = prov
	s.Images = newCatalog(ctx, cfg, st, drv.Volumes, bus, log, sbx.ReleasePool)
	if c, ok := drv.Runtime.(interface{ Check(context.Context) error }); ok {
		s.health.runtime = c.Check
	}
	s.API = api.New(api.Deps{
		Config: cfg, Store: st, Sandboxes: sbx, Auth: au, Bus: bus, Metrics: m, Log: log,
		Version: Version, Started: time.Now(), Registry: reg,
		Edge: ed, Ready: s.readiness, Host: reports, Images: s.Images, Workspaces: wss, Prebuilds: pbs,
	})
	return s, nil
}

// Listen binds the TCP address and, unless disabled, the unix socket.
func (s *Server) Listen(noUnix bool) error {
	l, err := net.Listen("tcp", s.Config.ManagerAddr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.Config.ManagerAddr(), err)
	}
	s.tcp = l
	if noUnix {
		return nil
	}
	path := s.Config.Server.SocketPath
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		l.Close()
		return fmt.Errorf("create socket dir: %w", err)
	}
	// A socket left by a crashed manager would make Listen fail; nothing else
	// owns this path, so removing it is safe.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.Close()
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ul, err := net.Listen("unix", path)
	if err != nil {
		l.Close()
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ul.Close()
		l.Close()
		return fmt.Errorf("restrict socket %s: %w", path, err)
	}
	s.unix = ul
	return nil
}

// URL is where a person opens the manager: the dashboard's URL in
// production, the local port in mock mode (which has no public name).
func (s *Server) URL() string {
	if s.Config.Server.Mode == config.ModeMock {
		_, port, _ := net.SplitHostPort(s.Addr())
		return "http://localhost:" + port + "/"
	}
	return strings.TrimRight(s.Config.DashboardURL(), "/") + "/"
}

// Addr is the bound TCP address.
func (s *Server) Addr() string { return s.tcp.Addr().String() }

// Serve runs until ctx is cancelled, then drains requests and returns. Sandboxes keep running.
func (s *Server) Serve(ctx context.Context) error {
	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancelBG = cancel
	s.health.serving.Store(true)
	// Converge before serving: a crash may have left sandboxes mid-operation
	// or resources without an owner. Replicas leave that to their leader.
	if !s.replicated() {
		if _, err := s.Sandboxes.Reconcile(bgCtx, true); err != nil {
			s.Log.Warn("start-up reconcile incomplete", "err", err)
		}
	}
	if err := s.startEdge(bgCtx); err != nil {
		return err
	}
	if s.policy != nil {
		s.bg.Add(1)
		go func() { defer s.bg.Done(); s.policy.run(bgCtx) }()
	}
	s.bg.Add(1)
	if s.replicated() {
		go func() { defer s.bg.Done(); s.lead(bgCtx) }()
	} else {
		go func() { defer s.bg.Done(); s.Sandboxes.RunReconciler(bgCtx, s.reconcileEvery) }()
	}
	// Builds a restart interrupted are settled (the ready prebuild kept),
	// then tracked branches are checked every 30 minutes. Replicas leave
	// that to the leader, for the builds of dead replicas only.
	if !s.replicated() {
		if err := s.Prebuilds.Recover(bgCtx); err != nil {
			s.Log.Warn("prebuild recovery incomplete", "err", err)
		}
	} else {
		s.bg.Add(1)
		go func() { defer s.bg.Done(); s.followRoutes(bgCtx) }()
	}
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Prebuilds.Loop(bgCtx, 30*time.Minute); s.Prebuilds.Stop() }()
	// Background pulls end with the manager; an interrupted one leaves its
	// repository as git leaves an interrupted fetch or merge.
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		<-bgCtx.Done()
		if pull := s.Provisioner.Pull; pull != nil {
			pull.Stop()
		}
	}()
	// Running guests learn the tool hosts' ports again: a changed
	// advanced.vm.* port moves the service the edge now routes to it.
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Sandboxes.ApplyRunning(bgCtx) }()
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Sandboxes.Run(bgCtx) }()
	// The warm pool (sandbox.pool.size) is kept by the leader alone; any
	// replica's create may claim from it (the store picks one claimer).
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Sandboxes.RunPool(bgCtx, s.Leading) }()
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Bus.Run(bgCtx) }()
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.sweep(bgCtx) }()
	// Guest git asks for credentials through its agent; the host polls.
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.GitCredentials.Run(bgCtx) }()
	// Image builds run as their own process: a directory read a second
	// shows their progress live on the Images page.
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Images.WatchBuilds(bgCtx, time.Second) }()
	// Starts Verdaccio when the npm cache is enabled; stops it at shutdown.
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.Registry.Run(bgCtx) }()
	// The SSH proxy stops with the other background work, before the store closes.
	if ln := s.listenSSH(); ln != nil {
		s.bg.Add(1)
		go func() { defer s.bg.Done(); s.serveSSH(bgCtx, ln) }()
	}

	h := s.timeouts.wrap(s.API.Handler())
	errLog := slog.NewLogLogger(s.Log.Handler(), slog.LevelWarn)
	s.httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: s.timeouts.ReadHeader, IdleTimeout: s.timeouts.Idle, ErrorLog: errLog}
	errc := make(chan error, 2)
	go func() { errc <- s.httpSrv.Serve(s.tcp) }()
	if s.unix != nil {
		s.unixSrv = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: s.timeouts.ReadHeader,
			IdleTimeout:       s.timeouts.Idle,
			ErrorLog:          errLog,
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				if trustedPeer(c) {
					return auth.ContextWithTrustedSocket(ctx)
				}
				return ctx
			},
		}
		go func() { errc <- s.unixSrv.Serve(s.unix) }()
	}
	s.Log.Info("manager listening", "url", s.URL(), "docs", s.URL()+"docs", "addr", s.Addr(), "socket", s.Config.Server.SocketPath,
		"mode", s.Config.Server.Mode, "store", s.Store.Backend(), "version", Version)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.shutdown()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *Server) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.health.serving.Store(false)
	// Event streams never end on their own; ended here, the drain below
	// waits only for ordinary requests.
	if n := s.API.CloseStreams(); n > 0 {
		s.Log.Info("closed event streams; clients resume with Last-Event-ID", "streams", n)
	}
	s.Log.Info("draining requests (at most 10 s); sandboxes keep running")
	if s.httpSrv != nil {
		_ = s.httpSrv.Shutdown(ctx)
	}
	if s.unixSrv != nil {
		_ = s.unixSrv.Shutdown(ctx)
		_ = os.Remove(s.Config.Server.SocketPath)
	}
	s.stopEdge()
	if s.cancelBG != nil {
		s.cancelBG()
	}
	s.bg.Wait()
	if s.Config.Server.Mode == config.ModeMock {
		// By design a manager's exit leaves sandboxes running; in mock mode
		// they are processes of the developer's, so say so.
		if n, err := s.Store.CountSandboxes(ctx, store.ActiveStatuses...); err == nil && n > 0 {
			s.Log.Info("mock sandboxes keep running as local processes of yours; the next start adopts them. "+
				"Stop them with `atelier sandbox stop` or `make clean`", "sandboxes", n)
		}
	}
	if err := s.Store.Close(); err != nil {
		s.Log.Warn("close store", "err", err)
	}
	s.Log.Info("manager stopped")
}

// sweep runs periodic housekeeping: expired sessions, logins, edge codes
// and tokens, and the sessions of users no longer allowed in.
func (s *Server) sweep(ctx context.Context) {
	t := time.NewTicker(auth.SweepEvery)
	defer t.Stop()
	for {
		if err := s.Auth.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn("auth sweep", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// trustedPeer admits root, or the manager's own user, on the unix socket:
// the socket file is 0600 already; the credential check keeps it safe even if
// someone loosens the file mode.
func trustedPeer(c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return false
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Getuid()
}

// newCatalog opens the image catalog on the volume drivers and syncs it
// from disk. Mock mode (and a test's own drivers) list the file driver's
// images under the state dir. A failed sync is logged: the catalog serves
// what the store last knew and syncs again on the next listing.
func newCatalog(ctx context.Context, cfg *config.Config, st *store.Store, vols sandbox.Volumes, bus *events.Bus, log *slog.Logger, release func(context.Context, string) error) *catalog.Catalog {
	cv, ok := vols.(catalog.Volumes)
	if !ok {
		cv = file.New(file.Config{StateDir: cfg.Sandbox.StateDir, Log: log})
	}
	c := catalog.New(catalog.Options{Store: st, Volumes: cv, Log: log, Prebuilds: func(ctx context.Context) (map[string][]string, error) {
		return st.PrebuildImages(ctx, cfg.Sandbox.DefaultImage)
	}, BuildsDir: filepath.Join(cfg.Sandbox.StateDir, "images"), Publish: func(ctx context.Context, typ string, data any) error {
		_, err := bus.Publish(ctx, typ, "", data)
		return err
	}, Release: release})
	if err := c.Sync(ctx); err != nil {
		log.Warn("image catalog sync at startup failed", "err", err)
	}
	return c
}

// setGitHub gives the workspace service the GitHub API of auth.github.apiUrl
// and the GitHub App of auth.github.appId, whose key must load now: a
// server that could not mint tokens later would fail every clone.
func setGitHub(cfg *config.Config, wss *workspace.Service) error {
	api, err := github.New(cfg.Auth.GitHub.APIURL, nil)
	if err != nil {
		return fmt.Errorf("auth.github.apiUrl: %w", err)
	}
	var app *github.App
	if cfg.Auth.GitHub.AppID > 0 {
		key, err := github.LoadKey(cfg.Auth.GitHub.AppPrivateKeyPath)
		if err != nil {
			return fmt.Errorf("auth.github.appPrivateKeyPath: %w", err)
		}
		app = github.NewApp(int64(cfg.Auth.GitHub.AppID), key, api)
	}
	wss.SetGitHub(api, app)
	return nil
}
