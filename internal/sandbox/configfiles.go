package sandbox

import (
	"context"
	"fmt"
	"strings"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// StepConfigFiles, after the services step (and a create's workspace
// steps) at every create and start: the global and workspace config files
// pushed into the guest (package guestfiles). A push that fails is noted in
// the journal and the log and does not fail the start: the files are
// settings the user can fix, and sync retries them.
const StepConfigFiles = "config-files"

// What a push did with one file.
const (
	ConfigWritten   = "written"
	ConfigUnchanged = "unchanged"
	ConfigKept      = "kept" // the guest changed it since the last push; force overwrites
	ConfigFailed    = "failed"
)

// ConfigFileResult is one file of a push.
type ConfigFileResult struct {
	Path      string `json:"path" doc:"As configured (~/... or /etc/...)."`
	GuestPath string `json:"guestPath,omitempty" doc:"The absolute path in the guest."`
	Action    string `json:"action" enum:"written,unchanged,kept,failed"`
	Error     string `json:"error,omitempty"`
}

// ConfigPusher pushes a sandbox's config files through its agent. initial
// is the first push into a fresh guest (an existing file there is the
// image's); force overwrites files the guest changed.
type ConfigPusher interface {
	PushConfigFiles(ctx context.Context, sb store.Sandbox, c *agent.Client, initial, force bool) ([]ConfigFileResult, error)
}

// SetConfigPusher installs the config file pusher; nil pushes none.
func (s *Service) SetConfigPusher(p ConfigPusher) { s.cfgPush.Store(&p) }

func (s *Service) configPusher() ConfigPusher {
	if p := s.cfgPush.Load(); p != nil {
		return *p
	}
	return nil
}

// pushConfigFiles is the journaled step's body.
func (s *Service) pushConfigFiles(ctx context.Context, sb store.Sandbox, initial bool) (string, error) {
	cp := s.configPusher()
	c := s.pooledAgent(sb.ID)
	if cp == nil || c == nil {
		return "", nil
	}
	res, err := cp.PushConfigFiles(ctx, sb, c, initial, false)
	if err != nil {
		s.log.Warn("config files not pushed", "sandbox_id", sb.ID, "err", err)
		return "not pushed: " + truncateDetail(err.Error()), nil
	}
	counts := map[string]int{}
	for _, r := range res {
		counts[r.Action]++
		if r.Action == ConfigFailed {
			s.log.Warn("config file not pushed", "sandbox_id", sb.ID, "path", r.Path, "err", r.Error)
		}
	}
	var parts []string
	for _, a := range []string{ConfigWritten, ConfigUnchanged, ConfigKept, ConfigFailed} {
		if counts[a] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[a], a))
		}
	}
	return strings.Join(parts, ", "), nil
}

// SyncConfigFiles pushes a running sandbox's config files now.
func (s *Service) SyncConfigFiles(ctx context.Context, id string, force bool) ([]ConfigFileResult, error) {
	cp := s.configPusher()
	if cp == nil {
		return nil, fmt.Errorf("sync config files: no config files on this host")
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sync config files: %w", err)
	}
	defer unlock()
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sync config files: %w", err)
	}
	if sb.Status != store.StatusRunning {
		return nil, &store.ConflictError{ID: id, Current: sb.Status, To: store.StatusRunning}
	}
	c := s.pooledAgent(id)
	if c == nil {
		return nil, fmt.Errorf("sync config files: sandbox %s has no agent", id)
	}
	res, err := cp.PushConfigFiles(ctx, sb, c, false, force)
	if err != nil {
		return nil, fmt.Errorf("sync config files: %w", err)
	}
	if res == nil {
		res = []ConfigFileResult{}
	}
	return res, nil
}
