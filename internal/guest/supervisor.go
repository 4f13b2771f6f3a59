package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"atelier/internal/agent"
	"atelier/internal/image/manifest"
)

// Supervisor tuning.
const (
	restartBackoffMin = 100 * time.Millisecond
	restartBackoffMax = 10 * time.Second
	// A run this long counts as healthy: the backoff starts over.
	stableRun     = 10 * time.Second
	maxStopGrace  = 10 * time.Minute
	stopPoll      = 20 * time.Millisecond
	maxSpecEnvLen = 256
)

// dnsLabel is the name rule for services and dev commands: names end up
// in log file names and in edge host names (dev-{name}-{id}).
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// supervisor runs services and dev commands: one mechanism, two name
// spaces. Each start request launches a run loop that restarts the
// process according to its policy until it is stopped or gives up.
type supervisor struct {
	s     *Server
	mu    sync.Mutex
	procs map[string]*proc

	// img is the image manifest (nil: none); imgErr why it is unusable.
	img    *manifest.Manifest
	imgErr error
	// want is the desired state on disk (services.go).
	want        *desired
	probeClient *http.Client
}

// proc is one named process; fields after mu-guarded comment are guarded
// by supervisor.mu.
type proc struct {
	kind, name string
	log        *logRing
	logPath    string

	// guarded by supervisor.mu
	spec      agent.ProcessSpec
	prep      *prepared
	state     string
	pid       int
	restarts  int
	startedAt time.Time
	exitedAt  time.Time
	exitCode  *int
	signal    string
	lastError string
	spawnErr  error // why the latest spawn failed
	run       *run  // current run loop, nil before the first start
	touched   time.Time
	// image is the manifest's declaration of an image service, nil for
	// services started through the API and for dev commands.
	image *manifest.Service
	// wanted: the desired state says this service runs.
	wanted bool
	// ready: the health check passed on the latest probe of this run.
	ready bool
}

// run is one start request's loop. A stopper sets grace, closes stopc
// and waits on done; the loop, which alone knows the current pid, does the
// signalling.
type run struct {
	stopc    chan struct{}
	stopOnce sync.Once
	grace    time.Duration
	done     chan struct{}
}

func newSupervisor(s *Server) *supervisor {
	return &supervisor{
		s: s, procs: map[string]*proc{},
		want:        &desired{dir: s.opts.StateDir, log: s.log},
		probeClient: newProbeClient(),
	}
}

func procKey(kind, name string) string { return kind + "/" + name }

func validName(name string) error {
	if !dnsLabel.MatchString(name) {
		return errBadField("name", "%q must be a DNS label: lowercase letters, digits and '-', 1 to 63 characters", name)
	}
	return nil
}

func (s *Server) validateSpec(kind string, spec *agent.ProcessSpec) (*prepared, error) {
	switch spec.Restart {
	case "":
		spec.Restart = agent.RestartNo
	case agent.RestartNo, agent.RestartOnFailure, agent.RestartAlways:
	default:
		return nil, errBadField("restart", "must be no, on-failure or always")
	}
	if spec.MaxRestarts < 0 {
		return nil, errBadField("maxRestarts", "must not be negative")
	}
	if spec.Port < 0 || spec.Port > 65535 {
		return nil, errBadField("port", "must be in [0, 65535]")
	}
	if spec.StopGraceMs < 0 || spec.StopGraceMs > maxStopGrace.Milliseconds() {
		return nil, errBadField("stopGraceMs", "must be in [0, %d]", maxStopGrace.Milliseconds())
	}
	if len(spec.Env) > maxSpecEnvLen {
		return nil, errBadField("env", "at most %d variables", maxSpecEnvLen)
	}
	env := spec.Env
	if spec.Port > 0 {
		if _, ok := env["PORT"]; !ok {
			env = make(map[string]string, len(spec.Env)+1)
			for k, v := range spec.Env {
				env[k] = v
			}
			env["PORT"] = strconv.Itoa(spec.Port)
		}
	}
	return s.prepare(commandSpec{argv: spec.Argv, shell: spec.Shell, login: spec.Login, env: env, cwd: spec.Cwd, user: spec.User})
}

func (p *proc) status() agent.ProcessStatus {
	st := agent.ProcessStatus{
		Name:        p.name,
		Kind:        p.kind,
		State:       p.state,
		Running:     p.state == agent.StateRunning || p.state == agent.StateStopping,
		PID:         p.pid,
		Port:        p.spec.Port,
		Argv:        p.spec.Argv,
		Shell:       p.spec.Shell,
		Cwd:         p.spec.Cwd,
		User:        p.spec.User,
		Restart:     p.spec.Restart,
		MaxRestarts: p.spec.MaxRestarts,
		Restarts:    p.restarts,
		ExitCode:    p.exitCode,
		Signal:      p.signal,
		LastError:   p.lastError,
		LogFile:     p.logPath,
	}
	if p.prep != nil && st.Cwd == "" {
		st.Cwd = p.prep.dir
	}
	if p.image != nil {
		st.Role, st.Image = p.image.Role, true
	}
	st.Wanted = p.wanted
	st.Ready = p.ready && st.State == agent.StateRunning
	if !p.startedAt.IsZero() {
		t := p.startedAt.UTC()
		st.StartedAt = &t
	}
	if !p.exitedAt.IsZero() {
		t := p.exitedAt.UTC()
		st.ExitedAt = &t
	}
	return st
}

func (p *proc) active() bool {
	return p.run != nil && (p.state == agent.StateRunning || p.state == agent.StateBackoff || p.state == agent.StateStopping)
}

// start launches name with spec. Starting an active process with the very
// same spec answers its status (idempotent provisioning); a different
// spec is a 409 (use restart).
func (sv *supervisor) start(kind, name string, spec agent.ProcessSpec) (agent.ProcessStatus, error) {
	prep, err := sv.s.validateSpec(kind, &spec)
	if err != nil {
		return agent.ProcessStatus{}, err
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	p := sv.procs[procKey(kind, name)]
	if p != nil && p.active() {
		if reflect.DeepEqual(p.spec, spec) {
			return p.status(), nil
		}
		return agent.ProcessStatus{}, errConflict(agent.CodeAlreadyRunning, "%s %s is already running with a different spec; restart it instead", kind, name)
	}
	if p == nil {
		if err := sv.makeRoom(); err != nil {
			return agent.ProcessStatus{}, err
		}
		if p, err = sv.newProc(kind, name); err != nil {
			return agent.ProcessStatus{}, err
		}
	}
	if err := sv.launch(p, spec, prep); err != nil {
		return agent.ProcessStatus{}, err
	}
	return p.status(), nil
}

// makeRoom evicts the least recently used inactive entry when the table
// is full. Called with mu held.
func (sv *supervisor) makeRoom() error {
	if len(sv.procs) < sv.s.opts.MaxProcesses {
		return nil
	}
	var victim *proc
	for _, p := range sv.procs {
		// The image's services are declared, not history: never evicted.
		if !p.active() && p.image == nil && (victim == nil || p.touched.Before(victim.touched)) {
			victim = p
		}
	}
	if victim == nil {
		return errConflict(agent.CodeLimitReached, "at most %d supervised processes", sv.s.opts.MaxProcesses)
	}
	victim.log.close()
	delete(sv.procs, procKey(victim.kind, victim.name))
	if victim.kind == agent.KindService {
		name := victim.name
		if err := sv.want.update(func(st *savedState) { delete(st.Services, name) }); err != nil {
			sv.s.log.Warn("forget evicted service", "name", name, "err", err)
		}
	}
	return nil
}

func (sv *supervisor) newProc(kind, name string) (*proc, error) {
	if err := os.MkdirAll(sv.s.opts.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	path := filepath.Join(sv.s.opts.LogDir, kind+"-"+name+".log")
	lr, err := openLogRing(path, sv.s.opts.LogMaxBytes)
	if err != nil {
		return nil, err
	}
	p := &proc{kind: kind, name: name, log: lr, logPath: path, state: agent.StateStopped}
	sv.procs[procKey(kind, name)] = p
	return p, nil
}

// launch starts a new run loop and waits for its first spawn, whose
// failure it returns (400/500 like exec). Called with mu held and p
// inactive.
func (sv *supervisor) launch(p *proc, spec agent.ProcessSpec, prep *prepared) error {
	p.spec, p.prep = spec, prep
	p.restarts, p.lastError, p.spawnErr = 0, "", nil
	p.exitCode, p.signal, p.exitedAt = nil, "", time.Time{}
	p.touched = time.Now()
	rn := &run{stopc: make(chan struct{}), done: make(chan struct{})}
	p.run = rn
	p.state = agent.StateRunning
	started := make(chan struct{})
	go sv.loop(p, rn, started)
	// Wait for the first spawn so the answer carries the pid (or the
	// failure). The loop takes mu itself, so release it meanwhile.
	sv.mu.Unlock()
	<-started
	sv.mu.Lock()
	if p.run == rn && p.spawnErr != nil {
		return startError(p.spawnErr)
	}
	return nil
}

// loop runs p until it is stopped, exits with no restart due, or spends
// its restart budget.
func (sv *supervisor) loop(p *proc, rn *run, started chan struct{}) {
	defer close(rn.done)
	once := sync.Once{}
	signalStarted := func() { once.Do(func() { close(started) }) }
	defer signalStarted()
	failures := 0
	for {
		sv.mu.Lock()
		if isClosed(rn.stopc) {
			p.state = agent.StateStopped
			sv.mu.Unlock()
			return
		}
		prep, spec := p.prep, p.spec
		sv.mu.Unlock()
		cmd, err := sv.spawn(p, prep)
		sv.mu.Lock()
		if err != nil {
			p.state, p.pid, p.lastError, p.spawnErr = agent.StateFailed, 0, "start: "+err.Error(), err
			sv.mu.Unlock()
			sv.s.log.Warn("supervised process failed to start", "kind", p.kind, "name", p.name, "err", err)
			return
		}
		pgid := cmd.Process.Pid
		p.pid, p.startedAt, p.state, p.ready = pgid, time.Now(), agent.StateRunning, false
		health := (*manifest.Health)(nil)
		if p.image != nil {
			health = p.image.Health
		}
		sv.mu.Unlock()
		key := procKey(p.kind, p.name)
		sv.want.setGroup(key, pgid)
		pctx, stopProbe := context.WithCancel(context.Background())
		go sv.probe(pctx, p, spec, health)
		signalStarted()

		began := time.Now()
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
			// Like systemd's control-group kill mode: once the main process
			// is gone, what is left of its group (a dev server's child still
			// holding the port) goes too, before any restart.
			if groupAlive(pgid) {
				terminate(pgid, exited, sv.s.opts.StopGrace)
			}
		case <-rn.stopc:
			terminate(pgid, exited, rn.grace)
		}
		code, sig := exitInfo(cmd.ProcessState)
		stopProbe()
		sv.want.setGroup(key, 0)

		sv.mu.Lock()
		p.exitCode, p.signal, p.exitedAt, p.pid, p.ready = &code, sig, time.Now(), 0, false
		stopping := isClosed(rn.stopc)
		due := !stopping && (spec.Restart == agent.RestartAlways || (spec.Restart == agent.RestartOnFailure && code != 0))
		switch {
		case stopping:
			p.state = agent.StateStopped
		case !due:
			p.state = agent.StateExited
		case spec.MaxRestarts > 0 && p.restarts >= spec.MaxRestarts:
			p.state = agent.StateFailed
			p.lastError = fmt.Sprintf("exited with code %d after %d restarts", code, p.restarts)
		default:
			p.state = agent.StateBackoff
		}
		state := p.state
		sv.mu.Unlock()

		if time.Since(began) >= stableRun {
			failures = 0
		}
		failures++
		delay := min(restartBackoffMin<<min(failures-1, 10), restartBackoffMax)
		note := ""
		if state == agent.StateBackoff {
			note = fmt.Sprintf(", restarting in %s", delay)
		}
		fmt.Fprintf(p.log, "[atelier-agent] %s exited with code %d%s\n", p.name, code, note)
		if state != agent.StateBackoff {
			return
		}
		t := time.NewTimer(delay)
		select {
		case <-rn.stopc:
			t.Stop()
			sv.mu.Lock()
			p.state = agent.StateStopped
			sv.mu.Unlock()
			return
		case <-t.C:
		}
		sv.mu.Lock()
		p.restarts++
		sv.mu.Unlock()
	}
}

// terminate sends SIGTERM to the group, waits up to grace for the leader
// to be reaped and the group to empty, then SIGKILLs whatever is left and
// waits for the leader.
func terminate(pgid int, exited <-chan struct{}, grace time.Duration) {
	_ = signalGroup(pgid, syscall.SIGTERM)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(stopPoll)
	defer tick.Stop()
	for {
		if isClosed(exited) && !groupAlive(pgid) {
			return
		}
		select {
		case <-deadline.C:
			killGroup(pgid)
			<-exited
			return
		case <-tick.C:
		case <-exited:
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// spawn starts one process of p with stdout and stderr on a pipe that a
// copier drains into the log ring. The copier outlives the leader while a
// grandchild still holds the pipe, which is what a log should capture.
func (sv *supervisor) spawn(p *proc, prep *prepared) (*exec.Cmd, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("log pipe: %w", err)
	}
	cmd := prep.command()
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	go func() {
		_, _ = io.Copy(p.log, pr)
		pr.Close()
	}()
	return cmd, nil
}

// stop ends p's run: SIGTERM to the group, then SIGKILL after grace if
// anything of the group is left. Stopping an inactive process is a no-op.
func (sv *supervisor) stop(ctx context.Context, kind, name string, grace time.Duration) (agent.ProcessStatus, error) {
	sv.mu.Lock()
	p := sv.procs[procKey(kind, name)]
	if p == nil {
		sv.mu.Unlock()
		return agent.ProcessStatus{}, errNotFound("%s %s does not exist", kind, name)
	}
	st, err := sv.stopLocked(ctx, p, grace)
	sv.mu.Unlock()
	return st, err
}

// stopLocked is stop with mu held (it releases mu while waiting).
func (sv *supervisor) stopLocked(ctx context.Context, p *proc, grace time.Duration) (agent.ProcessStatus, error) {
	p.touched = time.Now()
	rn := p.run
	if rn == nil || !p.active() {
		return p.status(), nil
	}
	if grace <= 0 {
		grace = time.Duration(p.spec.StopGraceMs) * time.Millisecond
	}
	if grace <= 0 {
		grace = sv.s.opts.StopGrace
	}
	if p.state == agent.StateRunning {
		p.state = agent.StateStopping
	}
	rn.stopOnce.Do(func() {
		rn.grace = grace
		close(rn.stopc)
	})
	sv.mu.Unlock()
	var err error
	select {
	case <-rn.done:
	case <-ctx.Done():
		err = fmt.Errorf("stop %s %s: %w", p.kind, p.name, ctx.Err())
	}
	sv.mu.Lock()
	return p.status(), err
}

func (sv *supervisor) restart(ctx context.Context, kind, name string, spec *agent.ProcessSpec) (agent.ProcessStatus, error) {
	var prep *prepared
	if spec != nil {
		var err error
		if prep, err = sv.s.validateSpec(kind, spec); err != nil {
			return agent.ProcessStatus{}, err
		}
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	p := sv.procs[procKey(kind, name)]
	if p == nil {
		if spec == nil {
			return agent.ProcessStatus{}, errNotFound("%s %s does not exist", kind, name)
		}
		if err := sv.makeRoom(); err != nil {
			return agent.ProcessStatus{}, err
		}
		var err error
		if p, err = sv.newProc(kind, name); err != nil {
			return agent.ProcessStatus{}, err
		}
	} else if _, err := sv.stopLocked(ctx, p, 0); err != nil {
		return agent.ProcessStatus{}, err
	}
	if p.active() {
		// Another request started it while we waited for the stop.
		return agent.ProcessStatus{}, errConflict(agent.CodeConflict, "%s %s was started concurrently", kind, name)
	}
	if spec == nil {
		if p.prep == nil {
			return agent.ProcessStatus{}, errNotFound("%s %s has never been started", kind, name)
		}
		spec, prep = &p.spec, p.prep
	}
	if err := sv.launch(p, *spec, prep); err != nil {
		return agent.ProcessStatus{}, err
	}
	return p.status(), nil
}

func (sv *supervisor) list(kind string) []agent.ProcessStatus {
	sv.mu.Lock()
	out := []agent.ProcessStatus{}
	groups := map[int]bool{}
	for _, p := range sv.procs {
		if p.kind == kind {
			st := p.status()
			out = append(out, st)
			if kind == agent.KindService && st.PID > 0 {
				groups[st.PID] = true
			}
		}
	}
	sv.mu.Unlock()
	if len(groups) > 0 {
		// Outside the lock: one pass over /proc.
		rss := groupRSS(groups)
		for i := range out {
			out[i].RSSBytes = rss[out[i].PID]
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (sv *supervisor) get(kind, name string) (*proc, agent.ProcessStatus, error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	p := sv.procs[procKey(kind, name)]
	if p == nil {
		return nil, agent.ProcessStatus{}, errNotFound("%s %s does not exist", kind, name)
	}
	return p, p.status(), nil
}

// stopAll stops every active process in parallel (agent shutdown).
func (sv *supervisor) stopAll(ctx context.Context) error {
	sv.mu.Lock()
	var ps []*proc
	for _, p := range sv.procs {
		ps = append(ps, p)
	}
	sv.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(ps))
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = sv.stop(ctx, p.kind, p.name, 0)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// HTTP handlers (kind is "service" or "dev").

func (s *Server) listProcs(w http.ResponseWriter, r *http.Request, kind string) error {
	return writeJSON(w, http.StatusOK, agent.ProcessList{Processes: s.sup.list(kind)})
}

func (s *Server) getProc(w http.ResponseWriter, r *http.Request, kind string) error {
	name := r.PathValue("name")
	if err := validName(name); err != nil {
		return err
	}
	_, st, err := s.sup.get(kind, name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st)
}

func (s *Server) startProc(w http.ResponseWriter, r *http.Request, kind string) error {
	name := r.PathValue("name")
	if err := validName(name); err != nil {
		return err
	}
	var spec *agent.ProcessSpec
	if err := decode(w, r, &spec, maxJSONBody, true); err != nil {
		return err
	}
	if kind == agent.KindService {
		if svc, ok := s.sup.imageService(name); ok {
			if err := noSpecFor(name, spec); err != nil {
				return err
			}
			st, err := s.sup.startImage(svc)
			if err != nil {
				return err
			}
			return writeJSON(w, http.StatusOK, st)
		}
	}
	if spec == nil {
		return errBadField("body", "a process spec is required")
	}
	if kind == agent.KindService {
		// Validate before remembering: a spec that cannot start is not
		// the desired state.
		probe := *spec
		if _, err := s.validateSpec(kind, &probe); err != nil {
			return err
		}
		if err := s.sup.want.update(func(st *savedState) { st.Services[name] = savedService{Wanted: true, Spec: &probe} }); err != nil {
			return err
		}
	}
	st, err := s.sup.start(kind, name, *spec)
	if err != nil {
		return err
	}
	if kind == agent.KindService {
		s.sup.setWanted(name, true)
		st.Wanted = true
	}
	return writeJSON(w, http.StatusOK, st)
}

// noSpecFor refuses a spec for an image service: the manifest is its spec.
func noSpecFor(name string, spec *agent.ProcessSpec) error {
	if spec != nil && !specEqual(*spec, agent.ProcessSpec{}) {
		return errBadField("body", "service %s is declared by the image; start, stop or restart it without a spec", name)
	}
	return nil
}

// startImage marks an image service wanted and starts it with its
// manifest spec (an active one with that spec is left running).
func (sv *supervisor) startImage(svc manifest.Service) (agent.ProcessStatus, error) {
	if err := sv.want.update(func(st *savedState) { st.Services[svc.Name] = savedService{Wanted: true} }); err != nil {
		return agent.ProcessStatus{}, err
	}
	spec := sv.imageSpec(svc)
	sv.mu.Lock()
	defer sv.mu.Unlock()
	p := sv.procs[procKey(agent.KindService, svc.Name)]
	if p == nil {
		return agent.ProcessStatus{}, errNotFound("service %s is not registered", svc.Name)
	}
	p.wanted = true
	if p.active() {
		if specEqual(p.spec, spec) {
			return p.status(), nil
		}
		if _, err := sv.stopLocked(context.Background(), p, 0); err != nil {
			return agent.ProcessStatus{}, err
		}
		if p.active() {
			return agent.ProcessStatus{}, errConflict(agent.CodeConflict, "service %s was started concurrently", svc.Name)
		}
	}
	if err := sv.launchImage(p, spec); err != nil {
		return agent.ProcessStatus{}, err
	}
	return p.status(), nil
}

// setWanted records the desired state on the process entry (the file is
// written by the caller).
func (sv *supervisor) setWanted(name string, on bool) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if p := sv.procs[procKey(agent.KindService, name)]; p != nil {
		p.wanted = on
	}
}

func (s *Server) stopProc(w http.ResponseWriter, r *http.Request, kind string) error {
	name := r.PathValue("name")
	if err := validName(name); err != nil {
		return err
	}
	var req agent.StopRequest
	if err := decode(w, r, &req, maxJSONBody, true); err != nil {
		return err
	}
	if req.GraceMs < 0 || req.GraceMs > maxStopGrace.Milliseconds() {
		return errBadField("graceMs", "must be in [0, %d]", maxStopGrace.Milliseconds())
	}
	if kind == agent.KindService {
		if _, _, err := s.sup.get(kind, name); err != nil {
			return err
		}
		// Unwanted first: an agent that dies during the stop must not
		// start the service again.
		err := s.sup.want.update(func(st *savedState) {
			sv := st.Services[name]
			sv.Wanted = false
			st.Services[name] = sv
		})
		if err != nil {
			return err
		}
		s.sup.setWanted(name, false)
	}
	st, err := s.sup.stop(r.Context(), kind, name, time.Duration(req.GraceMs)*time.Millisecond)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st)
}

func (s *Server) restartProc(w http.ResponseWriter, r *http.Request, kind string) error {
	name := r.PathValue("name")
	if err := validName(name); err != nil {
		return err
	}
	var spec *agent.ProcessSpec
	if err := decode(w, r, &spec, maxJSONBody, true); err != nil {
		return err
	}
	if kind == agent.KindService {
		if svc, ok := s.sup.imageService(name); ok {
			if err := noSpecFor(name, spec); err != nil {
				return err
			}
			if _, err := s.sup.stop(r.Context(), kind, name, 0); err != nil {
				return err
			}
			st, err := s.sup.startImage(svc)
			if err != nil {
				return err
			}
			return writeJSON(w, http.StatusOK, st)
		}
		saved, _ := s.sup.want.service(name)
		if spec != nil {
			probe := *spec
			if _, err := s.validateSpec(kind, &probe); err != nil {
				return err
			}
			saved.Spec = &probe
		}
		if saved.Spec != nil {
			saved.Wanted = true
			if err := s.sup.want.update(func(st *savedState) { st.Services[name] = saved }); err != nil {
				return err
			}
		}
	}
	st, err := s.sup.restart(r.Context(), kind, name, spec)
	if err != nil {
		return err
	}
	if kind == agent.KindService {
		s.sup.setWanted(name, true)
		st.Wanted = true
	}
	return writeJSON(w, http.StatusOK, st)
}

func (s *Server) procLogs(w http.ResponseWriter, r *http.Request, kind string) error {
	name := r.PathValue("name")
	if err := validName(name); err != nil {
		return err
	}
	offset, err := queryInt(r, "offset", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", agent.DefaultLogReadLimit, 1, agent.MaxLogReadLimit)
	if err != nil {
		return err
	}
	p, _, err := s.sup.get(kind, name)
	if err != nil {
		return err
	}
	b, from, next, end, err := p.log.read(offset, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, agent.LogChunk{Name: name, Content: string(b), Offset: from, NextOffset: next, Size: end})
}
