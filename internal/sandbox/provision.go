package sandbox

import (
	"context"
	"errors"
	"fmt"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// Provisioner sets up sandboxes of a workspace (package workspace). The
// lifecycle knows nothing of workspaces beyond this.
type Provisioner interface {
	// Prepare checks, before a sandbox is created, that req.OwnerID may use
	// req.WorkspaceID (a *FieldError on workspaceId otherwise, never a
	// sandbox provisioned with another user's secrets) and fills what the
	// request leaves to the workspace (image, vCPUs, memory).
	Prepare(ctx context.Context, req *CreateRequest) error
	// Steps are the create steps that provision sb through its agent, run
	// in order as journaled steps after the agent answers and before the
	// sandbox is marked running.
	Steps(ctx context.Context, sb store.Sandbox, mode ProvisionMode) ([]ProvisionStep, error)
}

// ProvisionMode is how a sandbox of a workspace is provisioned.
type ProvisionMode int

const (
	// FromImage clones the repositories and runs the init commands.
	FromImage ProvisionMode = iota
	// FromPrebuild starts from the workspace's prebuild volume, which
	// already holds the clones and the init commands' results.
	FromPrebuild
	// Build is the prebuild's own sandbox: clones and init commands only,
	// nothing secret (no secret variables or files), since its disk becomes
	// the prebuild every later sandbox starts from.
	Build
)

// Prebuilder is Volumes that keeps workspaces' prebuilds: a stopped
// sandbox's disk saved as prebuild-{workspaceId}, cloned by later creates.
type Prebuilder interface {
	// Prebuild snapshots the sandbox's disk as the workspace's prebuild,
	// replacing the previous one only once the new one is whole.
	Prebuild(ctx context.Context, workspaceID, sandboxID string) error
	DeletePrebuild(ctx context.Context, workspaceID string) error
	// CloneFromPrebuild makes the sandbox's volume from the prebuild.
	CloneFromPrebuild(ctx context.Context, workspaceID, id string) (path, driver string, err error)
}

// SavePrebuild saves a stopped sandbox's disk as its workspace's prebuild.
func (s *Service) SavePrebuild(ctx context.Context, workspaceID, sandboxID string) error {
	pb, ok := s.drv.Volumes.(Prebuilder)
	if !ok {
		return fmt.Errorf("save prebuild: %w", ErrNoPrebuilds)
	}
	unlock, err := s.locks.Lock(ctx, sandboxID)
	if err != nil {
		return fmt.Errorf("save prebuild: %w", err)
	}
	defer unlock()
	sb, err := s.st.GetSandbox(ctx, sandboxID)
	if err != nil {
		return fmt.Errorf("save prebuild: %w", err)
	}
	if sb.Status != store.StatusStopped {
		return &store.ConflictError{ID: sandboxID, Current: sb.Status, To: store.StatusStopped}
	}
	if err := pb.Prebuild(ctx, workspaceID, sandboxID); err != nil {
		return fmt.Errorf("save prebuild of workspace %s: %w", workspaceID, err)
	}
	return nil
}

// DeletePrebuild removes a workspace's prebuild volume; an absent one is success.
func (s *Service) DeletePrebuild(ctx context.Context, workspaceID string) error {
	pb, ok := s.drv.Volumes.(Prebuilder)
	if !ok {
		return nil
	}
	return pb.DeletePrebuild(ctx, workspaceID)
}

// ErrNoPrebuilds: the volume driver keeps no prebuilds.
var ErrNoPrebuilds = errors.New("the volume driver keeps no prebuilds")

// ProvisionStep is one journaled create step. Undo, when set, is run if a
// later step fails (the guest itself is destroyed anyway: Undo is for
// what lives outside it, such as edge routes).
type ProvisionStep struct {
	Name   string
	Detail string
	Run    func(ctx context.Context, c *agent.Client) (string, error)
	Undo   func(ctx context.Context) error
}

// SetProvisioner installs the workspace provisioner; nil leaves
// workspaceId a label.
func (s *Service) SetProvisioner(p Provisioner) { s.prov.Store(&p) }

func (s *Service) provisioner() Provisioner {
	if p := s.prov.Load(); p != nil {
		return *p
	}
	return nil
}

// provision runs the workspace's steps for a new sandbox.
func (s *Service) provision(p *plan, sb store.Sandbox) error {
	prov := s.provisioner()
	if prov == nil || sb.WorkspaceID == "" {
		return nil
	}
	var steps []ProvisionStep
	if err := p.step(StepWorkspace, sb.WorkspaceID, func(ctx context.Context) (string, error) {
		var err error
		steps, err = prov.Steps(ctx, sb, p.prov)
		return fmt.Sprintf("%d steps", len(steps)), err
	}, nil); err != nil {
		return err
	}
	c := s.pooledAgent(sb.ID)
	for _, st := range steps {
		if err := p.step(st.Name, st.Detail, func(ctx context.Context) (string, error) { return st.Run(ctx, c) }, st.Undo); err != nil {
			return err
		}
	}
	return nil
}
