package workspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// CredentialForHost opens the token of owner's git source for
// protocol://host (what a guest git's credential helper asks): the
// source's key must be exactly that host and scheme, and the binding is
// checked again by Credential. Another user's sources are never looked at.
func (s *Service) CredentialForHost(ctx context.Context, owner, protocol, host string) (Credential, error) {
	var key string
	switch protocol {
	case "https":
		key = host
	case "http":
		key = "http://" + host
	default:
		return Credential{}, fmt.Errorf("protocol %q: %w", protocol, ErrSourceHost)
	}
	list, err := s.st.ListGitSources(ctx, owner)
	if err != nil {
		return Credential{}, err
	}
	for _, g := range list {
		if k, _ := sourceKind(g); g.OwnerID == owner && strings.EqualFold(g.Host, key) && (len(g.Token) > 0 || k == KindApp) {
			return s.Credential(ctx, owner, g.ID, key)
		}
	}
	return Credential{}, fmt.Errorf("no git source of yours for %s://%s: %w", protocol, host, ErrSourceHost)
}

// CredentialBroker answers the guest's git credential requests: one long
// poll per running workspace sandbox on its agent's host-only route, the
// host always the initiator (the guest cannot call the manager).
type CredentialBroker struct {
	Workspaces *Service
	Store      *store.Store
	Agent      func(ctx context.Context, id string) (*agent.Client, error)
	Log        *slog.Logger
	// Leading, when set, limits polling to the replica holding the leader
	// lease, so a request is taken by one manager only.
	Leading func() bool
	// Wait is one poll's length; Every how often running sandboxes are listed.
	Wait, Every time.Duration

	mu      sync.Mutex
	polling map[string]context.CancelFunc
}

// Run keeps one poller per running workspace sandbox until ctx is done.
func (b *CredentialBroker) Run(ctx context.Context) {
	if b.Wait <= 0 {
		b.Wait = 25 * time.Second
	}
	if b.Every <= 0 {
		b.Every = 2 * time.Second
	}
	b.mu.Lock()
	b.polling = map[string]context.CancelFunc{}
	b.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(b.Every)
	defer t.Stop()
	for {
		b.sync(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sync starts a poller for each running workspace sandbox without one and
// stops those of sandboxes no longer running.
func (b *CredentialBroker) sync(ctx context.Context, wg *sync.WaitGroup) {
	if b.Leading != nil && !b.Leading() {
		b.mu.Lock()
		for _, cancel := range b.polling {
			cancel()
		}
		b.mu.Unlock()
		return
	}
	list, err := b.Store.ListSandboxes(ctx, store.SandboxFilter{Status: store.StatusRunning, NoTimings: true})
	if err != nil {
		if ctx.Err() == nil {
			b.Log.Warn("git credentials: list sandboxes", "err", err)
		}
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	running := map[string]bool{}
	for _, sb := range list {
		if sb.WorkspaceID == "" {
			continue
		}
		running[sb.ID] = true
		if _, ok := b.polling[sb.ID]; ok {
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		b.polling[sb.ID] = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.poll(pctx, sb.ID, sb.OwnerID)
			b.mu.Lock()
			delete(b.polling, sb.ID)
			b.mu.Unlock()
		}()
	}
	for id, cancel := range b.polling {
		if !running[id] {
			cancel()
		}
	}
}

// poll serves one sandbox's requests until ctx ends or its agent is gone.
func (b *CredentialBroker) poll(ctx context.Context, id, owner string) {
	log := b.Log.With("sandbox_id", id)
	fails := 0
	for ctx.Err() == nil {
		c, err := b.Agent(ctx, id)
		if err != nil {
			return
		}
		reqs, err := c.GitCredentialRequests(ctx, b.Wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// An older agent without the route, or one that is stopping:
			// the sandbox listing decides whether to keep trying.
			if fails++; fails >= 3 {
				log.Debug("git credentials: agent does not answer the poll", "err", err)
				return
			}
			time.Sleep(500 * time.Millisecond)
			continue
		}
		fails = 0
		if len(reqs) == 0 {
			continue
		}
		answers := make([]agent.GitCredentialAnswer, 0, len(reqs))
		for _, r := range reqs {
			a := agent.GitCredentialAnswer{ID: r.ID}
			cred, err := b.Workspaces.CredentialForHost(ctx, owner, r.Protocol, r.Host)
			switch {
			case err == nil && cred.Token != "":
				a.Username, a.Password = cred.Username, cred.Token
				log.Info("git credential given", "protocol", r.Protocol, "host", r.Host)
			case errors.Is(err, ErrSourceHost) || err == nil:
				a.Error = "no git source of the sandbox's owner for " + r.Protocol + "://" + r.Host
				log.Info("git credential refused", "protocol", r.Protocol, "host", r.Host)
			default:
				a.Error = "the manager could not open the credential"
				log.Warn("git credential", "host", r.Host, "err", err)
			}
			answers = append(answers, a)
		}
		if err := c.GitCredentialAnswer(ctx, answers); err != nil && ctx.Err() == nil {
			log.Warn("git credentials: deliver answers", "err", err)
		}
	}
}
