package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// AgentRuntime is a runtime whose guests run the Atelier agent. The
// in-memory test runtime is not one; every real runtime is.
type AgentRuntime interface {
	AgentDialer(id string) agent.Dialer
}

// AgentReadyTimeout bounds how long a booted guest may take to answer.
var AgentReadyTimeout = 60 * time.Second

// ErrNoAgent is returned for sandboxes whose runtime has no agent or that do not run.
var ErrNoAgent = errors.New("sandbox agent unavailable")

// agentPool keeps one client, with one pooled transport, per sandbox.
type agentPool struct {
	mu sync.Mutex
	m  map[string]*agent.Client
}

func (p *agentPool) get(rt AgentRuntime, id string) *agent.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*agent.Client{}
	}
	c, ok := p.m[id]
	if !ok {
		c = agent.New(rt.AgentDialer(id))
		p.m[id] = c
	}
	return c
}

func (p *agentPool) drop(id string) {
	p.mu.Lock()
	c, ok := p.m[id]
	delete(p.m, id)
	p.mu.Unlock()
	if ok {
		_ = c.Close()
	}
}

// waitAgent is the create and start step between boot and hooks: a sandbox
// is running only once its agent answers (the reference marked sandboxes
// running whose agent never came up, weak point 22).
func (s *Service) waitAgent(ctx context.Context, id string) error {
	c := s.pooledAgent(id)
	if c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, AgentReadyTimeout)
	defer cancel()
	if err := c.WaitReady(ctx, 5*time.Millisecond); err != nil {
		return fmt.Errorf("wait for agent: %w", err)
	}
	return nil
}

// pooledAgent is the pooled client of sandbox id's agent, whatever its
// state; nil when the runtime has no agent.
func (s *Service) pooledAgent(id string) *agent.Client {
	rt, ok := s.drv.Runtime.(AgentRuntime)
	if !ok {
		return nil
	}
	return s.agents.get(rt, id)
}

// Agent returns the agent client of a running sandbox.
func (s *Service) Agent(ctx context.Context, id string) (*agent.Client, error) {
	rt, ok := s.drv.Runtime.(AgentRuntime)
	if !ok {
		return nil, fmt.Errorf("sandbox %s: %w: the runtime has no agent", id, ErrNoAgent)
	}
	sb, err := s.st.GetSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	if sb.Status != store.StatusRunning {
		return nil, &store.ConflictError{ID: id, Current: sb.Status, To: store.StatusRunning}
	}
	return s.agents.get(rt, id), nil
}
