// Package registry is the sandboxes' shared npm cache: Verdaccio run by the
// manager as a supervised child process on the bridge address, the enabled
// state and eviction policy kept in the store, eviction of unused tarballs,
// and the npm, pnpm, bun and yarn configs written into every guest while
// the cache is enabled.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"atelier/internal/agent"
	"atelier/internal/keylock"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// SettingsKey is the store setting holding Settings.
const SettingsKey = "registry"

// DefaultEvictionDays is how long an unused tarball stays cached.
const DefaultEvictionDays = 14

// Settings are the persisted state of the cache.
type Settings struct {
	Enabled      bool `json:"enabled"`
	EvictionDays int  `json:"evictionDays"`
	// EverEnabled makes sandboxes that start while the cache is disabled
	// check for configs left from an earlier enable (written while they ran,
	// never removed because they were stopped at disable time). Until the
	// cache has been enabled once, starts skip that check.
	EverEnabled bool `json:"everEnabled,omitempty"`
}

// Sandboxes is what the cache needs from the lifecycle service.
type Sandboxes interface {
	List(ctx context.Context, f store.SandboxFilter) ([]store.Sandbox, error)
	Agent(ctx context.Context, id string) (*agent.Client, error)
	Wait(ctx context.Context, id string) (store.Sandbox, error)
}

// ServiceOptions configure a Service.
type ServiceOptions struct {
	Store *store.Store
	// Supervisor runs Verdaccio; nil (mock mode) only records the setting.
	Supervisor *Supervisor
	// Sandboxes enables injection; nil leaves guests alone (mock mode,
	// whose "guests" are processes in the developer's own home).
	Sandboxes Sandboxes
	// Targets are where configs go in guests (default DefaultTargets).
	Targets *Targets
	// EvictEvery is the eviction job's period (default 1 h).
	EvictEvery time.Duration
	Log        *slog.Logger
	// now is the clock (tests).
	now func() time.Time
}

// Service is the npm cache as the API and the lifecycle see it.
type Service struct {
	o   ServiceOptions
	log *slog.Logger

	opMu     sync.Mutex // one enable, disable, purge or settings change at a time
	stMu     sync.RWMutex
	settings Settings

	locks   keylock.Mutex // one config update per sandbox at a time
	waiters sync.WaitGroup

	running atomic.Bool
	jobs    atomic.Int32 // eviction loops alive: one, whatever enable and disable do
	evicted atomic.Int64 // eviction runs (tests)
	tick    <-chan time.Time
}

// NewService loads the settings; it starts nothing (Run does).
func NewService(ctx context.Context, o ServiceOptions) (*Service, error) {
	if o.Store == nil {
		return nil, errors.New("registry: no store")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Targets == nil {
		t := DefaultTargets()
		o.Targets = &t
	}
	if o.EvictEvery <= 0 {
		o.EvictEvery = time.Hour
	}
	if o.now == nil {
		o.now = time.Now
	}
	s := &Service{o: o, log: o.Log.With("component", "registry")}
	s.settings = Settings{EvictionDays: DefaultEvictionDays}
	if _, err := o.Store.GetSetting(ctx, SettingsKey, &s.settings); err != nil {
		return nil, fmt.Errorf("registry: load settings: %w", err)
	}
	if s.settings.EvictionDays < 1 || s.settings.EvictionDays > 365 {
		s.settings.EvictionDays = DefaultEvictionDays
	}
	return s, nil
}

// Settings returns the current settings.
func (s *Service) Settings() Settings {
	s.stMu.RLock()
	defer s.stMu.RUnlock()
	return s.settings
}

func (s *Service) save(ctx context.Context, next Settings) error {
	if err := s.o.Store.PutSetting(ctx, SettingsKey, next); err != nil {
		return fmt.Errorf("registry: save settings: %w", err)
	}
	s.stMu.Lock()
	s.settings = next
	s.stMu.Unlock()
	return nil
}

// Run is the cache's life inside the manager: it starts Verdaccio when the
// cache is enabled, brings running guests in line with the setting, runs the
// eviction job, and stops Verdaccio when ctx ends. The eviction job lives
// exactly as long as Run: enabling and disabling never start another one
// (the reference stacked a new cron job on every enable, weak point 37).
func (s *Service) Run(ctx context.Context) {
	if !s.running.CompareAndSwap(false, true) {
		s.log.Error("registry service already running")
		return
	}
	defer s.running.Store(false)
	s.jobs.Add(1)
	defer s.jobs.Add(-1)

	if s.Settings().Enabled {
		s.ensureStarted(ctx)
		s.syncAll(ctx)
	}

	tick := s.tick
	if tick == nil {
		t := time.NewTicker(s.o.EvictEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if sup := s.o.Supervisor; sup != nil {
				if err := sup.Stop(bg); err != nil {
					s.log.Warn("stop npm registry", "err", err)
				}
			}
			cancel()
			s.waiters.Wait()
			return
		case <-tick:
			if s.Settings().Enabled {
				// A Verdaccio that could not start (at boot, say) gets
				// another chance every period.
				s.ensureStarted(ctx)
				if _, err := s.Evict(ctx); err != nil {
					s.log.Warn("npm cache eviction", "err", err)
				}
			}
		}
	}
}

// ensureStarted starts Verdaccio if the cache is enabled and it is not
// running; under opMu, so it cannot undo a concurrent Disable.
func (s *Service) ensureStarted(ctx context.Context) {
	sup := s.o.Supervisor
	if sup == nil || sup.Running() {
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if !s.Settings().Enabled || sup.Running() {
		return
	}
	if err := sup.Start(ctx); err != nil {
		s.log.Error("npm cache enabled but its registry did not start", "err", err)
	}
}

// Enable starts Verdaccio, records the cache as enabled, and configures
// every running guest. When Verdaccio cannot start the cache stays
// disabled and the error (wrapping ErrUnavailable) says why.
func (s *Service) Enable(ctx context.Context) (Status, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if sup := s.o.Supervisor; sup != nil {
		if err := sup.Start(ctx); err != nil {
			return Status{}, err
		}
	}
	next := s.Settings()
	wasEnabled := next.Enabled
	next.Enabled, next.EverEnabled = true, true
	if err := s.save(ctx, next); err != nil {
		return Status{}, err
	}
	if !wasEnabled {
		s.log.Info("npm cache enabled")
	}
	s.syncAll(ctx)
	return s.Status(ctx), nil
}

// Disable records the cache as disabled, removes the configs from every
// running guest (stopped guests lose theirs when they next start) and
// stops Verdaccio. The cached packages stay on disk.
func (s *Service) Disable(ctx context.Context) (Status, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.Settings()
	wasEnabled := next.Enabled
	next.Enabled = false
	if err := s.save(ctx, next); err != nil {
		return Status{}, err
	}
	// Guests first: while they still point at it, the registry should answer.
	s.syncAll(ctx)
	if sup := s.o.Supervisor; sup != nil {
		if err := sup.Stop(context.WithoutCancel(ctx)); err != nil {
			return Status{}, err
		}
	}
	if wasEnabled {
		s.log.Info("npm cache disabled")
	}
	return s.Status(ctx), nil
}

// SetEvictionDays changes how long unused tarballs are kept (1..365).
func (s *Service) SetEvictionDays(ctx context.Context, days int) (Status, error) {
	if days < 1 || days > 365 {
		return Status{}, fmt.Errorf("registry: evictionDays %d: want 1..365", days)
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.Settings()
	next.EvictionDays = days
	if err := s.save(ctx, next); err != nil {
		return Status{}, err
	}
	return s.Status(ctx), nil
}

// Purge deletes every cached tarball (and the package metadata with them).
func (s *Service) Purge(ctx context.Context) (Removed, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.o.Supervisor == nil {
		return Removed{}, nil
	}
	r, err := purge(s.o.Supervisor.StorageDir())
	s.log.Info("npm cache purged", "tarballs", r.Tarballs, "bytes", r.Bytes, "packages", r.Packages)
	return r, err
}

// Evict deletes the tarballs unused for the configured number of days.
func (s *Service) Evict(ctx context.Context) (Removed, error) {
	s.evicted.Add(1)
	if s.o.Supervisor == nil {
		return Removed{}, nil
	}
	days := s.Settings().EvictionDays
	r, err := evict(s.o.Supervisor.StorageDir(), s.o.now().Add(-time.Duration(days)*24*time.Hour))
	if r.Tarballs > 0 || r.Packages > 0 {
		s.log.Info("npm cache evicted unused tarballs", "tarballs", r.Tarballs, "bytes", r.Bytes, "packages", r.Packages, "days", days)
	}
	return r, err
}

// Status is the cache as GET /api/registry shows it.
type Status struct {
	Enabled       bool         `json:"enabled"`
	Online        bool         `json:"online" doc:"Verdaccio answers its ping now."`
	URL           string       `json:"url" doc:"The registry as guests reach it."`
	PackageCount  int          `json:"packageCount" doc:"Packages with cached metadata."`
	DiskUsedBytes int64        `json:"diskUsedBytes" doc:"Disk used by the cache's storage."`
	Uplink        UplinkStatus `json:"uplink"`
	EvictionDays  int          `json:"evictionDays" doc:"Tarballs unused for this many days are deleted."`
}

// UplinkStatus is the upstream registry.
type UplinkStatus struct {
	URL     string `json:"url" doc:"The npm registry configured on the host."`
	Healthy bool   `json:"healthy" doc:"It answered its ping (probed from the registry's network namespace)."`
}

// Status reports the cache; the probes run concurrently and are bounded.
func (s *Service) Status(ctx context.Context) Status {
	st := s.Settings()
	out := Status{Enabled: st.Enabled, EvictionDays: st.EvictionDays}
	sup := s.o.Supervisor
	if sup == nil {
		return out
	}
	out.URL = sup.URL()
	out.Uplink.URL, _ = sup.Uplink(ctx)
	var wg sync.WaitGroup
	if sup.Running() {
		wg.Add(1)
		go func() { defer wg.Done(); out.Online = sup.Online(ctx) }()
	}
	if out.Uplink.URL != "" {
		wg.Add(1)
		go func() { defer wg.Done(); out.Uplink.Healthy = sup.UplinkHealthy(ctx, out.Uplink.URL) }()
	}
	if u, err := usage(sup.StorageDir()); err == nil {
		out.PackageCount, out.DiskUsedBytes = u.Packages, u.Bytes
	} else {
		s.log.Warn("measure npm cache", "err", err)
	}
	wg.Wait()
	return out
}

// Hooks follow sandboxes: a sandbox about to run gets the configs while the
// cache is enabled, and loses stale ones while it is disabled.
func (s *Service) Hooks() sandbox.Hooks {
	return sandbox.Hooks{OnRunning: func(ctx context.Context, v sandbox.View, c *agent.Client) error {
		if c == nil || s.o.Sandboxes == nil {
			return nil
		}
		if st := s.Settings(); !st.Enabled && !st.EverEnabled {
			return nil
		}
		// A guest without the cache's configs still works (it reaches the
		// uplink directly), so a failure here must not fail the sandbox.
		if err := s.apply(ctx, v.ID, c); err != nil {
			s.log.Warn("configure npm clients in sandbox", "sandbox_id", v.ID, "err", err)
		}
		return nil
	}}
}

// apply brings one guest in line with the setting read under the sandbox's
// lock, so concurrent enables, disables and starts converge on the last one.
func (s *Service) apply(ctx context.Context, id string, c *agent.Client) error {
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	sup := s.o.Supervisor
	if sup == nil {
		return nil
	}
	enabled := s.Settings().Enabled
	files := clientFiles(*s.o.Targets, sup.URL(), sup.opts.Listen.Addr().String())
	if err := applyFiles(ctx, c, files, enabled); err != nil {
		return err
	}
	s.log.Debug("npm client configs updated", "sandbox_id", id, "enabled", enabled)
	return nil
}

// syncAll applies the setting to every running guest now, and to every
// guest still being created or started once it settles (its start hook may
// have read the setting before this change).
func (s *Service) syncAll(ctx context.Context) {
	if s.o.Sandboxes == nil || s.o.Supervisor == nil {
		return
	}
	list, err := s.o.Sandboxes.List(ctx, store.SandboxFilter{NoTimings: true})
	if err != nil {
		s.log.Warn("list sandboxes for npm client configs", "err", err)
		return
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, sb := range list {
		switch sb.Status {
		case store.StatusRunning:
			wg.Add(1)
			sem <- struct{}{}
			go func(id string) {
				defer func() { <-sem; wg.Done() }()
				s.applyRunning(ctx, id)
			}(sb.ID)
		case store.StatusCreating, store.StatusStarting:
			s.waiters.Add(1)
			go func(id string) {
				defer s.waiters.Done()
				wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
				defer cancel()
				if got, err := s.o.Sandboxes.Wait(wctx, id); err == nil && got.Status == store.StatusRunning {
					s.applyRunning(wctx, id)
				}
			}(sb.ID)
		}
	}
	wg.Wait()
}

func (s *Service) applyRunning(ctx context.Context, id string) {
	c, err := s.o.Sandboxes.Agent(ctx, id)
	if err == nil {
		err = s.apply(ctx, id, c)
	}
	if err != nil {
		s.log.Warn("configure npm clients in sandbox", "sandbox_id", id, "err", err)
	}
}
