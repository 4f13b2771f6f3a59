package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"atelier/internal/agent"
	"atelier/internal/events"
	"atelier/internal/image/manifest"
	"atelier/internal/store"
)

// The services of a sandbox's image run under its agent (see package guest:
// the agent reads the image manifest, keeps the desired state on the guest's
// disk and restarts what dies). The manager's part: it tells the agent the
// ports of the tool hosts (advanced.vm.*) as a journaled step of every
// create and start, starts and stops the on-demand browser as journaled
// operations, and shows the services' states in the sandbox's view from a
// short cache, so no list or page waits on a slow agent.

// Journal names of the service steps.
const (
	// StepServices, in create and start after the agent answers: the host's
	// ports are sent, the wanted services run.
	StepServices = "services"
	// OpBrowserStart and OpBrowserStop have one step, StepService.
	OpBrowserStart = "browser-start"
	OpBrowserStop  = "browser-stop"
	StepService    = "service"
)

// Service state timing.
var (
	// ServicesFresh is how long a read of the agent's services is reused.
	ServicesFresh = time.Second
	// servicesTimeout bounds one read; past it the last states are shown.
	servicesTimeout = 500 * time.Millisecond
	// watchFor bounds how long states are followed after a change, for the
	// events that say a service became ready.
	watchFor = 2 * time.Minute
)

// ErrNoService is an operation on a service the sandbox's image does not have.
var ErrNoService = errors.New("the sandbox's image has no such service")

// ServiceState is one supervised service of a running sandbox, as its agent
// reported it.
type ServiceState struct {
	Name string `json:"name"`
	Role string `json:"role,omitempty" enum:"vscode,opencode,browser" doc:"The tool host it backs: vscode (sandbox-{id}), opencode (opencode-{id}), browser (browser-{id})."`
	// State is the agent's process state.
	State  string `json:"state" enum:"running,backoff,stopping,stopped,exited,failed" doc:"running; backoff (exited, restart due); stopping; stopped (on request, or never started); exited (ended, no restart due); failed (could not start, or its restarts are spent)."`
	Port   int    `json:"port,omitempty" doc:"Guest port it serves."`
	Ready  bool   `json:"ready" doc:"Its health check passes: it answers on its port."`
	Wanted bool   `json:"wanted" doc:"The agent keeps it running, across agent restarts and sandbox stops; the browser is wanted once started."`
	// LastError says why it failed or is not ready.
	LastError string `json:"lastError,omitempty"`
}

func serviceStates(list []agent.ProcessStatus) []ServiceState {
	out := make([]ServiceState, 0, len(list))
	for _, p := range list {
		out = append(out, ServiceState{Name: p.Name, Role: p.Role, State: p.State, Port: p.Port, Ready: p.Ready, Wanted: p.Wanted, LastError: p.LastError})
	}
	slices.SortFunc(out, func(a, b ServiceState) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// svcCache holds the last states read from each running sandbox's agent.
type svcCache struct {
	mu sync.Mutex
	m  map[string]*svcEntry
	// watching: sandboxes whose states are followed until they settle.
	watching map[string]time.Time
}

type svcEntry struct {
	states []ServiceState
	at     time.Time
	// fetch is closed when the read in flight ends; nil when none is.
	fetch chan struct{}
}

func (c *svcCache) get(id string) ([]ServiceState, time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[id]
	if e == nil || e.at.IsZero() {
		return nil, time.Time{}, false
	}
	return e.states, e.at, true
}

// put stores states and reports whether they differ from the previous ones.
func (c *svcCache) put(id string, states []ServiceState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*svcEntry{}
	}
	e := c.m[id]
	if e == nil {
		e = &svcEntry{}
		c.m[id] = e
	}
	changed := e.at.IsZero() || !slices.Equal(e.states, states)
	e.states, e.at = states, time.Now()
	return changed
}

func (c *svcCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
	delete(c.watching, id)
}

// rolePorts are the tool hosts' guest ports, which the edge routes to.
func (s *Service) rolePorts() map[string]int {
	vm := s.cfg.Advanced.VM
	return map[string]int{
		manifest.RoleVSCode: vm.VSCode.Port, manifest.RoleOpenCode: vm.OpenCode.Port, manifest.RoleBrowser: vm.Browser.Port,
	}
}

// applyServices is the StepServices action: the agent gets the host's
// ports, restarts services whose port changed and starts the wanted ones.
// An image without a manifest has no services; that is not an error.
func (s *Service) applyServices(ctx context.Context, id string) (string, error) {
	c := s.pooledAgent(id)
	if c == nil {
		return "", nil
	}
	list, err := c.ApplyServices(ctx, agent.ServicesApply{Ports: s.rolePorts()})
	var ae *agent.Error
	if errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed) {
		// An agent older than the image manifest: nothing to start.
		return "agent has no image services", nil
	}
	if err != nil {
		return "", fmt.Errorf("apply image services: %w", err)
	}
	states := serviceStates(list)
	s.svc.put(id, states)
	if !settledServices(states) {
		s.watchServices(id)
	}
	return describeStates(states), nil
}

func describeStates(states []ServiceState) string {
	if len(states) == 0 {
		return "no image services"
	}
	parts := make([]string, 0, len(states))
	for _, st := range states {
		parts = append(parts, st.Name+":"+st.State)
	}
	return strings.Join(parts, " ")
}

// cachedServices are the last states read of a running sandbox, for views
// that must not wait (the list, events).
func (s *Service) cachedServices(id string) []ServiceState {
	states, _, _ := s.svc.get(id)
	return states
}

// Services reads a running sandbox's service states from its agent, at
// most once per ServicesFresh and never longer than half a second: a slow
// agent gets the last states read (ok false when there are none). A change
// is published as sandbox.updated.
func (s *Service) Services(ctx context.Context, id string) (states []ServiceState, ok bool) {
	if states, at, ok := s.svc.get(id); ok && time.Since(at) < ServicesFresh {
		return states, true
	}
	s.svc.mu.Lock()
	if s.svc.m == nil {
		s.svc.m = map[string]*svcEntry{}
	}
	e := s.svc.m[id]
	if e == nil {
		e = &svcEntry{}
		s.svc.m[id] = e
	}
	wait := e.fetch
	if wait == nil {
		wait = make(chan struct{})
		e.fetch = wait
		go s.fetchServices(id, e, wait)
	}
	s.svc.mu.Unlock()
	t := time.NewTimer(servicesTimeout)
	defer t.Stop()
	select {
	case <-wait:
	case <-t.C:
	case <-ctx.Done():
	}
	states, _, ok = s.svc.get(id)
	return states, ok
}

// fetchServices is the one read in flight for a sandbox; it outlives the
// request that started it, bounded by its own timeout.
func (s *Service) fetchServices(id string, e *svcEntry, done chan struct{}) {
	defer func() {
		s.svc.mu.Lock()
		if e.fetch == done {
			e.fetch = nil
		}
		s.svc.mu.Unlock()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil || sb.Status != store.StatusRunning {
		return
	}
	c := s.pooledAgent(id)
	if c == nil {
		return
	}
	list, err := c.Services(ctx)
	if err != nil {
		s.log.Debug("read services", "sandbox_id", id, "err", err)
		return
	}
	if s.svc.put(id, serviceStates(list)) {
		s.publishServices(ctx, id)
	}
}

// publishServices sends sandbox.updated with the new states, if the
// sandbox still runs.
func (s *Service) publishServices(ctx context.Context, id string) {
	unlock, err := s.evLocks.Lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil || sb.Status != store.StatusRunning {
		return
	}
	s.publish(ctx, events.SandboxUpdated, sb)
}

// ViewFresh is View with the services read from the agent (bounded: see
// Services); for one sandbox's GET, not for lists.
func (s *Service) ViewFresh(ctx context.Context, sb store.Sandbox) View {
	if sb.Status == store.StatusRunning {
		s.Services(ctx, sb.ID)
	}
	return s.View(sb)
}

// ServiceByRole is the service behind a tool host (vscode, opencode,
// browser). known is false when nothing was read yet from the agent; ok is
// false when the image has no service with that role. Only cached states
// are used unless fresh is set (then at most half a second is spent).
func (s *Service) ServiceByRole(ctx context.Context, id, role string, fresh bool) (st ServiceState, ok, known bool) {
	var states []ServiceState
	if fresh {
		states, known = s.Services(ctx, id)
	} else {
		states, _, known = s.svc.get(id)
	}
	for _, x := range states {
		if x.Role == role {
			return x, true, known
		}
	}
	return ServiceState{}, false, known
}

// watchServices follows a sandbox's states for a while after a change, so
// the services becoming ready (or failing) reach the event stream. One
// watch per sandbox; a new change extends it.
func (s *Service) watchServices(id string) {
	s.svc.mu.Lock()
	if s.svc.watching == nil {
		s.svc.watching = map[string]time.Time{}
	}
	_, on := s.svc.watching[id]
	s.svc.watching[id] = time.Now().Add(watchFor)
	s.svc.mu.Unlock()
	if on {
		return
	}
	s.watchers.Go(func() {
		wait := 100 * time.Millisecond
		for {
			select {
			case <-s.stopWatch:
				return
			case <-time.After(wait):
			}
			wait = min(wait*2, 2*time.Second)
			s.svc.mu.Lock()
			until, on := s.svc.watching[id]
			if on && time.Now().After(until) {
				delete(s.svc.watching, id)
				on = false
			}
			s.svc.mu.Unlock()
			if !on {
				return
			}
			states, ok := s.Services(context.Background(), id)
			if ok && settledServices(states) {
				s.svc.mu.Lock()
				delete(s.svc.watching, id)
				s.svc.mu.Unlock()
				return
			}
		}
	})
}

// settledServices: every wanted service is ready or has given up.
func settledServices(states []ServiceState) bool {
	for _, st := range states {
		if st.Wanted && !st.Ready && st.State != agent.StateFailed && st.State != agent.StateExited {
			return false
		}
	}
	return true
}

// ApplyRunning sends the ports to every running sandbox's agent, once, at
// manager start: a changed advanced.vm.* port reaches the guests the edge
// now routes to it. Sandboxes a lifecycle operation holds are skipped
// (their start applies them). Failures are logged.
func (s *Service) ApplyRunning(ctx context.Context) {
	list, err := s.st.ListSandboxes(ctx, store.SandboxFilter{Status: store.StatusRunning, NoTimings: true})
	if err != nil {
		s.log.Warn("apply services: list sandboxes", "err", err)
		return
	}
	for _, sb := range list {
		if ctx.Err() != nil {
			return
		}
		lctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		unlock, err := s.locks.Lock(lctx, sb.ID)
		cancel()
		if err != nil {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		detail, err := s.applyServices(actx, sb.ID)
		cancel()
		unlock()
		if err != nil {
			s.log.Warn("apply services", "sandbox_id", sb.ID, "err", err)
			continue
		}
		s.log.Debug("services applied", "sandbox_id", sb.ID, "services", detail)
	}
}

// Browser is the state of a running sandbox's browser service, read from
// its agent; ErrNoService when its image has none.
func (s *Service) Browser(ctx context.Context, id string) (ServiceState, error) {
	c, err := s.Agent(ctx, id)
	if err != nil {
		return ServiceState{}, err
	}
	return s.browserOf(ctx, id, c)
}

func (s *Service) browserOf(ctx context.Context, id string, c *agent.Client) (ServiceState, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := c.Services(ctx)
	if err != nil {
		return ServiceState{}, fmt.Errorf("read services of %s: %w", id, err)
	}
	states := serviceStates(list)
	if s.svc.put(id, states) {
		s.publishServices(context.WithoutCancel(ctx), id)
	}
	for _, st := range states {
		if st.Role == manifest.RoleBrowser {
			return st, nil
		}
	}
	return ServiceState{}, fmt.Errorf("sandbox %s: %w: no browser", id, ErrNoService)
}

// StartBrowser starts the on-demand browser stack of a running sandbox and
// marks it wanted (it then survives agent restarts and sandbox stops). A
// journaled operation under the sandbox's lock, so it never races a stop.
func (s *Service) StartBrowser(ctx context.Context, id string) (ServiceState, error) {
	return s.browserOp(ctx, id, OpBrowserStart)
}

// StopBrowser stops the browser stack and marks it unwanted.
func (s *Service) StopBrowser(ctx context.Context, id string) (ServiceState, error) {
	return s.browserOp(ctx, id, OpBrowserStop)
}

func (s *Service) browserOp(ctx context.Context, id, op string) (st ServiceState, err error) {
	defer func() { s.m.ObserveOp(op, result(err)) }()
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return st, fmt.Errorf("%s %s: %w", op, id, err)
	}
	defer unlock()
	c, err := s.Agent(ctx, id)
	if err != nil {
		return st, err
	}
	st, err = s.browserOf(ctx, id, c)
	if err != nil {
		return st, err
	}
	// The agent answers once the stack is spawned (or stopped): a client
	// gone away must not leave the step open.
	p := s.newPlan(context.WithoutCancel(ctx), id, op)
	err = p.step(StepService, st.Name, func(ctx context.Context) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var ps *agent.ProcessStatus
		var err error
		if op == OpBrowserStart {
			ps, err = c.StartImageService(ctx, st.Name)
		} else {
			ps, err = c.StopService(ctx, st.Name, 0)
		}
		if err != nil {
			return "", err
		}
		return ps.State, nil
	}, nil)
	if err != nil {
		return st, fmt.Errorf("%s %s: %w", op, id, err)
	}
	st, err = s.browserOf(ctx, id, c)
	if err == nil && op == OpBrowserStart {
		s.watchServices(id)
	}
	s.log.InfoContext(ctx, "browser "+strings.TrimPrefix(op, "browser-"), "sandbox_id", id, "state", st.State)
	return st, err
}
