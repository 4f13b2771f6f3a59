package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
	"atelier/internal/image/manifest"
)

// Services of the image, and the desired state that outlives the agent.
//
// The image manifest (Options.ManifestPath, /etc/atelier/image.json in an
// image) declares the services; the agent registers them all at start and
// runs the wanted ones, as the manifest's user in its workdir. What is
// wanted lives on the guest's disk (Options.StateDir): an autostart service
// is wanted until someone stops it, an on-demand one (the browser) once
// someone starts it, and a service started through the API with its own
// spec is remembered with that spec. So an agent restart, and a stop and
// start of the sandbox, come back to the same set (the reference lost its
// services whenever the agent restarted).
//
// The process groups of the running services are also written down
// (groups.json): an agent that died without stopping them (SIGKILL, a
// crash) left them to init, holding their ports; the next agent ends those
// groups before it starts the services again.

// stateFile and groupsFile live in Options.StateDir.
const (
	stateFile    = "services.json"
	groupsFile   = "groups.json"
	stateSchema  = 1
	reclaimGrace = 3 * time.Second
)

// Readiness probing of a running service.
const (
	probeFirst     = 50 * time.Millisecond
	probeMaxWait   = time.Second
	probeSteady    = 5 * time.Second
	probeTimeout   = 2 * time.Second
	defaultReadyBy = 60 * time.Second
)

// portVar is replaced by the service's port in the argv and env values of
// image services, which cannot know the port the host picks.
const portVar = "${PORT}"

// savedState is services.json.
type savedState struct {
	Schema int `json:"schema"`
	// Ports by role, as the host last sent them.
	Ports    map[string]int          `json:"ports,omitempty"`
	Services map[string]savedService `json:"services,omitempty"`
}

type savedService struct {
	Wanted bool `json:"wanted"`
	// Spec of a service started through the API; image services take
	// theirs from the manifest.
	Spec *agent.ProcessSpec `json:"spec,omitempty"`
}

// savedGroup is one entry of groups.json: a process group this agent
// started, and its leader's start time (to tell a reused pid).
type savedGroup struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"`
}

// desired is the on-disk desired state. Its mutex is taken after the
// supervisor's (never before), so it may be updated with sv.mu held.
type desired struct {
	dir string // "" keeps everything in memory (tests, no state dir)
	log interface {
		Warn(string, ...any)
	}

	mu     sync.Mutex
	st     savedState
	groups map[string]savedGroup
}

func (d *desired) path(name string) string { return filepath.Join(d.dir, name) }

// load reads services.json; a missing file is an empty state and an
// unreadable one is set aside so the agent still starts.
func (d *desired) load() {
	d.st = savedState{Schema: stateSchema, Ports: map[string]int{}, Services: map[string]savedService{}}
	d.groups = map[string]savedGroup{}
	if d.dir == "" {
		return
	}
	b, err := os.ReadFile(d.path(stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var st savedState
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err == nil && st.Schema != stateSchema {
		err = fmt.Errorf("schema %d, want %d", st.Schema, stateSchema)
	}
	if err != nil {
		bad := d.path(stateFile + ".bad")
		_ = os.Rename(d.path(stateFile), bad)
		d.log.Warn("desired service state unreadable; starting from the image's defaults", "file", d.path(stateFile), "moved_to", bad, "err", err)
		return
	}
	if st.Ports != nil {
		d.st.Ports = st.Ports
	}
	if st.Services != nil {
		d.st.Services = st.Services
	}
}

// update changes the state and writes it through (fsynced) before
// returning, so an answer the host got is what the next agent restores.
func (d *desired) update(fn func(*savedState)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	fn(&d.st)
	if d.dir == "" {
		return nil
	}
	b, err := json.MarshalIndent(&d.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode desired service state: %w", err)
	}
	if err := writeState(d.dir, stateFile, b, true); err != nil {
		return fmt.Errorf("save desired service state: %w", err)
	}
	return nil
}

func (d *desired) service(name string) (savedService, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.st.Services[name]
	return s, ok
}

func (d *desired) port(role string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Ports[role]
}

func (d *desired) apiServices() map[string]savedService {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]savedService{}
	for name, s := range d.st.Services {
		if s.Spec != nil {
			out[name] = s
		}
	}
	return out
}

// setGroup records (pgid > 0) or forgets a running process group. Not
// fsynced: the file only matters within one boot of the guest.
func (d *desired) setGroup(key string, pgid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if pgid > 0 {
		d.groups[key] = savedGroup{PGID: pgid, Start: procStart(pgid)}
	} else {
		delete(d.groups, key)
	}
	if d.dir == "" {
		return
	}
	b, _ := json.Marshal(d.groups)
	if err := writeState(d.dir, groupsFile, b, false); err != nil {
		d.log.Warn("record process groups", "err", err)
	}
}

// leftover reads the groups a previous agent left running, and forgets them.
func (d *desired) leftover() map[string]savedGroup {
	if d.dir == "" {
		return nil
	}
	b, err := os.ReadFile(d.path(groupsFile))
	if err != nil {
		return nil
	}
	var g map[string]savedGroup
	if json.Unmarshal(b, &g) != nil {
		return nil
	}
	_ = os.Remove(d.path(groupsFile))
	return g
}

// writeState replaces dir/name atomically; the directory is the root's
// alone (0700): the desired state says what runs as whom.
func writeState(dir, name string, b []byte, sync bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if sync {
		return atomicWrite(filepath.Join(dir, name), bytes.NewReader(b), 0o600, nil, false)
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// procStart is a process's start time in clock ticks since boot (field 22
// of /proc/pid/stat), 0 when it is gone.
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// reclaim ends the process groups a previous agent left behind. A group
// whose leader is alive counts only if it is the same process (same start
// time); a group whose leader is gone but whose members live is still
// ours, since Linux never hands out a pid still in use as a group id.
func reclaim(groups map[string]savedGroup, log interface{ Info(string, ...any) }) {
	var wg sync.WaitGroup
	for key, g := range groups {
		if g.PGID <= 1 || !groupAlive(g.PGID) {
			continue
		}
		if start := procStart(g.PGID); start != 0 && start != g.Start {
			continue // the pid now belongs to someone else
		}
		wg.Go(func() {
			log.Info("ending a process group a previous agent left running", "process", key, "pgid", g.PGID)
			_ = signalGroup(g.PGID, unix.SIGTERM)
			deadline := time.Now().Add(reclaimGrace)
			for groupAlive(g.PGID) && time.Now().Before(deadline) {
				time.Sleep(stopPoll)
			}
			killGroup(g.PGID)
		})
	}
	wg.Wait()
}

// imageSpec is the spec an image service runs with: the manifest's process
// with the host's port for its role, the manifest's user and workdir when
// it names none, and ${PORT} expanded.
func (sv *supervisor) imageSpec(svc manifest.Service) agent.ProcessSpec {
	spec := svc.Process
	spec.Argv = slices.Clone(spec.Argv)
	spec.Env = maps.Clone(spec.Env)
	if svc.Role != "" {
		if p := sv.want.port(svc.Role); p > 0 {
			spec.Port = p
		}
	}
	if spec.User == "" {
		spec.User = sv.img.User
	}
	if spec.Cwd == "" {
		spec.Cwd = sv.img.Workdir
	}
	port := strconv.Itoa(spec.Port)
	for i, a := range spec.Argv {
		spec.Argv[i] = strings.ReplaceAll(a, portVar, port)
	}
	for k, v := range spec.Env {
		spec.Env[k] = strings.ReplaceAll(v, portVar, port)
	}
	spec.Shell = strings.ReplaceAll(spec.Shell, portVar, port)
	return spec
}

// imageService returns the manifest's service called name.
func (sv *supervisor) imageService(name string) (manifest.Service, bool) {
	if sv.img == nil {
		return manifest.Service{}, false
	}
	for _, s := range sv.img.Services {
		if s.Name == name {
			return s, true
		}
	}
	return manifest.Service{}, false
}

// wantedImage is whether an image service should run: as last set, else
// as the manifest says.
func (sv *supervisor) wantedImage(svc manifest.Service) bool {
	if s, ok := sv.want.service(svc.Name); ok {
		return s.Wanted
	}
	return svc.Autostart
}

// boot runs once, before the agent listens: it ends what a previous agent
// left running, registers the image's services and starts every wanted
// service.
func (sv *supervisor) boot() {
	s := sv.s
	sv.want.load()
	reclaim(sv.want.leftover(), s.log)
	if path := s.opts.ManifestPath; path != "" {
		m, err := manifest.Read(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			s.log.Info("no image manifest; no image services", "path", path)
		case err != nil:
			sv.imgErr = err
			s.log.Error("image manifest unusable; no image services", "path", path, "err", err)
		default:
			sv.img = m
		}
	}
	if sv.img != nil {
		for _, svc := range sv.img.Services {
			sv.mu.Lock()
			p, err := sv.newProc(agent.KindService, svc.Name)
			if err == nil {
				p.image = &svc
				p.wanted = sv.wantedImage(svc)
			}
			sv.mu.Unlock()
			if err != nil {
				s.log.Error("register image service", "name", svc.Name, "err", err)
			}
		}
	}
	sv.ensure()
	for name, saved := range sv.want.apiServices() {
		if _, img := sv.imageService(name); img || !saved.Wanted {
			continue
		}
		if _, err := sv.start(agent.KindService, name, *saved.Spec); err != nil {
			s.log.Warn("restore service", "name", name, "err", err)
		}
		sv.setWanted(name, true)
	}
}

// ensure makes the image services match the desired state: a wanted one
// that is not running starts, a running one whose spec changed (its port)
// restarts. Unwanted ones are left alone: stopping is the stop request's.
func (sv *supervisor) ensure() {
	if sv.img == nil {
		return
	}
	for _, svc := range sv.img.Services {
		spec := sv.imageSpec(svc)
		sv.mu.Lock()
		p := sv.procs[procKey(agent.KindService, svc.Name)]
		if p == nil {
			sv.mu.Unlock()
			continue
		}
		p.wanted = sv.wantedImage(svc)
		var err error
		switch {
		case p.active() && !specEqual(p.spec, spec):
			if _, err = sv.stopLocked(context.Background(), p, 0); err == nil && !p.active() {
				err = sv.launchImage(p, spec)
			}
		case p.wanted && !p.active():
			err = sv.launchImage(p, spec)
		}
		sv.mu.Unlock()
		if err != nil {
			sv.s.log.Warn("start image service", "name", svc.Name, "err", err)
		}
	}
}

// launchImage starts an image service with spec. Called with mu held and
// p inactive; a spec that does not validate (a binary the image lacks)
// leaves the service failed with the reason.
func (sv *supervisor) launchImage(p *proc, spec agent.ProcessSpec) error {
	prep, err := sv.s.validateSpec(agent.KindService, &spec)
	if err != nil {
		p.spec, p.state, p.lastError = spec, agent.StateFailed, "start: "+err.Error()
		return err
	}
	return sv.launch(p, spec, prep)
}

func specEqual(a, b agent.ProcessSpec) bool {
	if a.Restart == "" {
		a.Restart = agent.RestartNo
	}
	if b.Restart == "" {
		b.Restart = agent.RestartNo
	}
	return slices.Equal(a.Argv, b.Argv) && a.Shell == b.Shell && a.Login == b.Login && maps.Equal(a.Env, b.Env) &&
		a.Cwd == b.Cwd && a.User == b.User && a.Port == b.Port && a.Restart == b.Restart &&
		a.MaxRestarts == b.MaxRestarts && a.StopGraceMs == b.StopGraceMs
}

// applyServices is POST /services/apply.
func (s *Server) applyServices(w http.ResponseWriter, r *http.Request) error {
	var req agent.ServicesApply
	if err := decode(w, r, &req, maxJSONBody, true); err != nil {
		return err
	}
	for role, port := range req.Ports {
		switch role {
		case manifest.RoleVSCode, manifest.RoleOpenCode, manifest.RoleBrowser:
		default:
			return errBadField("ports", "unknown role %q (want vscode, opencode or browser)", role)
		}
		if port < 0 || port > 65535 {
			return errBadField("ports", "%s: port must be in [0, 65535]", role)
		}
	}
	err := s.sup.want.update(func(st *savedState) {
		for role, port := range req.Ports {
			if port > 0 {
				st.Ports[role] = port
			}
		}
	})
	if err != nil {
		return err
	}
	s.sup.ensure()
	return writeJSON(w, http.StatusOK, agent.ProcessList{Processes: s.sup.list(agent.KindService)})
}

// imageInfo is GET /image: the manifest the agent runs, or why it has none.
func (s *Server) imageInfo(w http.ResponseWriter, r *http.Request) error {
	if s.sup.imgErr != nil {
		return &apiError{status: http.StatusUnprocessableEntity, code: agent.CodeBadRequest, detail: s.sup.imgErr.Error()}
	}
	if s.sup.img == nil {
		return errNotFound("the image has no manifest")
	}
	return writeJSON(w, http.StatusOK, s.sup.img)
}

// probe keeps p.ready current while one spawn of p runs: quickly until
// the first success (the host waits on it), then every few seconds.
func (sv *supervisor) probe(ctx context.Context, p *proc, spec agent.ProcessSpec, h *manifest.Health) {
	check := sv.checker(spec, h)
	readyBy := defaultReadyBy
	if h != nil && h.TimeoutMs > 0 {
		readyBy = time.Duration(h.TimeoutMs) * time.Millisecond
	}
	began := time.Now()
	wait, ever, late := probeFirst, false, false
	for {
		ok := check(ctx)
		if ctx.Err() != nil {
			return
		}
		sv.mu.Lock()
		if ctx.Err() != nil {
			// This run ended while the check was out: its answer is stale.
			sv.mu.Unlock()
			return
		}
		p.ready = ok
		if ok && late && strings.HasPrefix(p.lastError, "not ready") {
			p.lastError = ""
		}
		if !ok && !ever && !late && time.Since(began) > readyBy {
			late = true
			p.lastError = fmt.Sprintf("not ready after %s", readyBy)
		}
		sv.mu.Unlock()
		ever = ever || ok
		if ever {
			wait = probeSteady
		} else {
			wait = min(wait*2, probeMaxWait)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// checker is the service's health check: an HTTP GET answered below 500
// on the manifest's path, else a TCP connect to its port, else running
// counts as ready.
func (sv *supervisor) checker(spec agent.ProcessSpec, h *manifest.Health) func(context.Context) bool {
	if spec.Port <= 0 {
		return func(context.Context) bool { return true }
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(spec.Port))
	if h != nil && h.Path != "" {
		url := "http://" + addr + h.Path
		return func(ctx context.Context) bool {
			ctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return false
			}
			res, err := sv.probeClient.Do(req)
			if err != nil {
				return false
			}
			res.Body.Close()
			return res.StatusCode < 500
		}
	}
	return func(ctx context.Context) bool {
		d := net.Dialer{Timeout: probeTimeout}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

// newProbeClient never follows redirects (a login page is an answer) and
// keeps no connections: probes are seconds apart.
func newProbeClient() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// groupRSS sums the resident memory of the processes of each group in
// pgids (the browser stack is several programs), from one pass over /proc.
func groupRSS(pgids map[int]bool) map[int]int64 {
	out := map[int]int64{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	page := int64(os.Getpagesize())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		// After the command: state, ppid, pgrp, ... rss is the 24th field.
		f := strings.Fields(s[i+1:])
		if len(f) < 22 {
			continue
		}
		pgrp, _ := strconv.Atoi(f[2])
		if !pgids[pgrp] {
			continue
		}
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		out[pgrp] += rss * page
	}
	return out
}
