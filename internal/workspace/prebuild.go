package workspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"atelier/internal/agent"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// maxPrebuildLog bounds the log kept with a prebuild.
const maxPrebuildLog = 16 << 10

// ErrNotRunning refuses to promote a sandbox that is not running: the
// prebuild's commits are read from the running guest, and a prebuild
// without them would count as stale and be rebuilt over at the next check.
var ErrNotRunning = errors.New("only a running sandbox can be saved as a prebuild: start it first")

// ErrCancelled ends a build cancelled by its owner.
var ErrCancelled = errors.New("prebuild cancelled")

// Prebuilds builds workspaces' prebuilds: a sandbox of the workspace clones
// and runs the init commands (with nothing secret), is stopped cleanly, and
// its disk becomes prebuild-{workspaceId}. The previous prebuild stays in
// use until the new one is saved; a failed build leaves it in place.
type Prebuilds struct {
	ws   *Service
	st   *store.Store
	sbx  *sandbox.Service
	user string
	log  *slog.Logger

	mu      sync.Mutex
	running map[string]context.CancelFunc
	wg      sync.WaitGroup

	// Shared is set on a store other managers share (replicas): a build
	// touched within it may be another replica's, which Cancel here must
	// not settle, and only the leader (Leading) checks for stale prebuilds.
	Shared  time.Duration
	Leading func() bool
}

// NewPrebuilds returns the prebuild runner; user is the guest user
// (Provisioner.User).
func NewPrebuilds(ws *Service, st *store.Store, sbx *sandbox.Service, user string, log *slog.Logger) *Prebuilds {
	if log == nil {
		log = slog.Default()
	}
	return &Prebuilds{ws: ws, st: st, sbx: sbx, user: user, log: log, running: map[string]context.CancelFunc{}}
}

// Status returns the workspace's prebuild state.
func (b *Prebuilds) Status(ctx context.Context, workspaceID string) (store.Prebuild, error) {
	return b.st.GetPrebuild(ctx, workspaceID)
}

// Start begins a build in the background; store.ErrBusy when one runs.
func (b *Prebuilds) Start(ctx context.Context, workspaceID string) (store.Prebuild, error) {
	w, err := b.ws.Get(ctx, workspaceID)
	if err != nil {
		return store.Prebuild{}, err
	}
	if err := b.st.BeginPrebuild(ctx, workspaceID); err != nil {
		return store.Prebuild{}, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b.mu.Lock()
	b.running[workspaceID] = cancel
	b.mu.Unlock()
	b.wg.Go(func() {
		defer cancel()
		b.run(bctx, w)
		b.mu.Lock()
		delete(b.running, workspaceID)
		b.mu.Unlock()
	})
	return b.st.GetPrebuild(ctx, workspaceID)
}

// Wait waits for the builds running now.
func (b *Prebuilds) Wait() { b.wg.Wait() }

// Stop cancels the running builds and waits for them (shutdown): each
// destroys its sandbox and settles, before the store closes.
func (b *Prebuilds) Stop() {
	b.mu.Lock()
	for _, cancel := range b.running {
		cancel()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Cancel stops a running build (its sandbox is destroyed), or resets a
// building status no build holds (a crash's leftover).
func (b *Prebuilds) Cancel(ctx context.Context, workspaceID string) (store.Prebuild, error) {
	b.mu.Lock()
	cancel := b.running[workspaceID]
	b.mu.Unlock()
	if cancel != nil {
		cancel()
		return b.st.GetPrebuild(ctx, workspaceID)
	}
	if b.Shared > 0 {
		pb, err := b.st.GetPrebuild(ctx, workspaceID)
		if err != nil {
			return pb, err
		}
		if pb.Status == store.PrebuildBuilding && time.Since(pb.UpdatedAt) < b.Shared {
			return pb, fmt.Errorf("prebuild of %s runs on another manager replica; cancel it there: %w", workspaceID, store.ErrBusy)
		}
	}
	return b.settle(ctx, workspaceID, "", ErrCancelled)
}

// Delete removes the workspace's prebuild; refused while a build runs.
func (b *Prebuilds) Delete(ctx context.Context, workspaceID string) error {
	pb, err := b.st.GetPrebuild(ctx, workspaceID)
	if err != nil {
		return err
	}
	if pb.Status == store.PrebuildBuilding {
		return store.ErrBusy
	}
	if err := b.sbx.DeletePrebuild(ctx, workspaceID); err != nil {
		return err
	}
	if pb.Status == store.PrebuildNone && !pb.Ready {
		return nil
	}
	_, err = b.st.UpdatePrebuild(ctx, workspaceID, func(p *store.Prebuild) {
		p.Status, p.Ready, p.Commits, p.BuiltAt, p.Stale, p.Error = store.PrebuildNone, false, nil, nil, false, ""
		p.Source, p.SourceSandboxID = "", ""
	})
	return err
}

// DeleteWorkspace deletes the workspace, then its prebuild volume.
func (b *Prebuilds) DeleteWorkspace(ctx context.Context, workspaceID string) error {
	pb, err := b.st.GetPrebuild(ctx, workspaceID)
	if err != nil {
		return err
	}
	if pb.Status == store.PrebuildBuilding {
		return store.ErrBusy
	}
	if err := b.ws.Delete(ctx, workspaceID); err != nil {
		return err
	}
	return b.sbx.DeletePrebuild(ctx, workspaceID)
}

func (b *Prebuilds) appendLog(ctx context.Context, workspaceID, line string) {
	_, err := b.st.UpdatePrebuild(ctx, workspaceID, func(p *store.Prebuild) {
		p.Log += time.Now().UTC().Format(time.TimeOnly) + " " + line + "\n"
		if len(p.Log) > maxPrebuildLog {
			p.Log = p.Log[len(p.Log)-maxPrebuildLog:]
		}
	})
	if err != nil {
		b.log.Warn("prebuild log", "workspace_id", workspaceID, "err", err)
	}
}

// run is one build. Every way out destroys the build sandbox and settles
// the status; only a saved prebuild replaces the ready one.
func (b *Prebuilds) run(ctx context.Context, w Workspace) {
	bg := context.WithoutCancel(ctx)
	begin := time.Now()
	sb, err := b.sbx.Create(ctx, sandbox.CreateRequest{OwnerID: w.OwnerID, WorkspaceID: w.ID, Mode: sandbox.Build,
		Image: w.Config.Image, Vcpus: w.Config.Vcpus, MemoryMB: w.Config.MemoryMB})
	if err != nil {
		b.settle(bg, w.ID, "", fmt.Errorf("create build sandbox: %w", err))
		return
	}
	_, _ = b.st.UpdatePrebuild(bg, w.ID, func(p *store.Prebuild) { p.BuildID = sb.ID })
	b.appendLog(bg, w.ID, "build sandbox "+sb.ID+" created")
	commits, err := b.build(ctx, w, sb.ID)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		b.appendLog(bg, w.ID, "stopping the build sandbox")
		if _, err = b.sbx.Stop(bg, sb.ID); err == nil {
			err = b.sbx.SavePrebuild(bg, w.ID, sb.ID)
		}
	}
	if errors.Is(err, context.Canceled) {
		err = ErrCancelled
	}
	if derr := b.sbx.Destroy(bg, sb.ID); derr != nil && !errors.Is(derr, store.ErrNotFound) {
		b.log.Error("prebuild sandbox not destroyed", "sandbox_id", sb.ID, "workspace_id", w.ID, "err", derr)
	}
	if err != nil {
		b.settle(bg, w.ID, sb.ID, err)
		return
	}
	now := time.Now().UTC()
	_, err = b.st.UpdatePrebuild(bg, w.ID, func(p *store.Prebuild) {
		p.Status, p.Ready, p.Commits, p.BuiltAt, p.CheckedAt, p.Stale, p.BuildID, p.Error =
			store.PrebuildReady, true, commits, &now, &now, false, "", ""
		p.Source, p.SourceSandboxID = store.SourceBuild, ""
		p.Log += fmt.Sprintf("%s prebuild saved in %s\n", now.Format(time.TimeOnly), time.Since(begin).Round(time.Millisecond))
	})
	if err != nil {
		b.log.Error("prebuild saved but not recorded", "workspace_id", w.ID, "err", err)
		return
	}
	b.log.Info("prebuild ready", "workspace_id", w.ID, "sandbox_id", sb.ID, "took_ms", time.Since(begin).Milliseconds())
}

// build waits for the build sandbox's create (clones and init commands are
// its journaled steps) and reads the commits it cloned.
func (b *Prebuilds) build(ctx context.Context, w Workspace, id string) (map[string]string, error) {
	sb, err := b.sbx.Wait(ctx, id)
	if err != nil {
		return nil, err
	}
	ops, _ := b.st.ListOps(context.WithoutCancel(ctx), id)
	for _, o := range ops {
		if strings.HasPrefix(o.Step, "ws-") {
			b.appendLog(context.WithoutCancel(ctx), w.ID, fmt.Sprintf("%s %s: %s", o.Step, o.State, o.Detail))
		}
	}
	if sb.Status != store.StatusRunning {
		return nil, fmt.Errorf("build sandbox: %s", sb.Error)
	}
	return b.commits(ctx, w, id)
}

// commits reads the HEAD of each of the workspace's repositories in the
// running sandbox.
func (b *Prebuilds) commits(ctx context.Context, w Workspace, id string) (map[string]string, error) {
	c, err := b.sbx.Agent(ctx, id)
	if err != nil {
		return nil, err
	}
	home, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", `printf %s "$HOME"`}, User: b.user})
	if err != nil {
		return nil, fmt.Errorf("find home: %w", err)
	}
	commits := map[string]string{}
	for _, r := range w.Config.Repos {
		res, err := c.Exec(ctx, agent.ExecRequest{User: b.user,
			Argv: []string{"git", "-C", path.Join(strings.TrimSpace(home.Stdout), WorkdirName, r.Path), "rev-parse", "HEAD"}})
		if err != nil || res.ExitCode != 0 {
			return nil, fmt.Errorf("commit of %s: %v", r.Path, err)
		}
		commits[r.Path] = strings.TrimSpace(res.Stdout)
	}
	// Written to the disk by the time Stop returns: the agent syncs on
	// shutdown, and the volume is snapshotted only once the guest is down.
	return commits, nil
}

// PromotedLog starts the log of a prebuild saved from a user's sandbox (the
// row's source says promote and names the sandbox).
const PromotedLog = "promoted from sandbox "

// failPromote records a failed promote like a failed build (the ready
// prebuild kept) and returns the cause.
func (b *Prebuilds) failPromote(ctx context.Context, workspaceID, sandboxID string, cause error) (store.Prebuild, error) {
	pb, err := b.settle(ctx, workspaceID, sandboxID, cause)
	if err != nil {
		b.log.Error("failed promote not recorded", "workspace_id", workspaceID, "sandbox_id", sandboxID, "err", err)
	}
	return pb, fmt.Errorf("promote %s: %w", sandboxID, cause)
}

// Promote saves a sandbox of the workspace as its prebuild ("save as
// prebuild"). It is consistent by stopping: the running sandbox's commits
// are read, it is stopped (the agent syncs and the guest is down before the
// disk is copied), saved, and started again. The row is marked
// building meanwhile, so a build or another promote gets store.ErrBusy. The
// drivers write the new prebuild beside the old one and swap only once it is
// complete: any failure leaves the previous prebuild ready.
func (b *Prebuilds) Promote(ctx context.Context, workspaceID, sandboxID string) (store.Prebuild, error) {
	w, err := b.ws.Get(ctx, workspaceID)
	if err != nil {
		return store.Prebuild{}, err
	}
	sb, err := b.sbx.Get(ctx, sandboxID)
	if err != nil {
		return store.Prebuild{}, err
	}
	if sb.WorkspaceID != workspaceID {
		return store.Prebuild{}, fmt.Errorf("promote %s: sandbox belongs to workspace %q: %w", sandboxID, sb.WorkspaceID, store.ErrNotFound)
	}
	if sb.Status != store.StatusRunning {
		return store.Prebuild{}, fmt.Errorf("promote %s (%s): %w", sandboxID, sb.Status, ErrNotRunning)
	}
	if err := b.st.BeginPrebuild(ctx, workspaceID); err != nil {
		return store.Prebuild{}, err
	}
	bg := context.WithoutCancel(ctx)
	begin := time.Now()
	b.appendLog(bg, workspaceID, PromotedLog+sandboxID)
	was := sb.Status
	var commits map[string]string
	if was == store.StatusRunning {
		// Best effort: a repository the user removed or broke leaves its
		// commit unknown, which the staleness check reads as stale.
		if commits, err = b.commits(ctx, w, sandboxID); err != nil {
			b.appendLog(bg, workspaceID, "commits not read: "+err.Error())
			commits = nil
		}
		b.appendLog(bg, workspaceID, "stopping the sandbox")
		if _, err = b.sbx.Stop(bg, sandboxID); err != nil {
			return b.failPromote(bg, workspaceID, sandboxID, fmt.Errorf("stop sandbox %s: %w", sandboxID, err))
		}
	}
	err = b.sbx.SavePrebuild(bg, workspaceID, sandboxID)
	if was == store.StatusRunning {
		b.appendLog(bg, workspaceID, "starting the sandbox again")
		if _, serr := b.sbx.Start(bg, sandboxID); serr != nil {
			b.log.Warn("promoted sandbox not restarted", "sandbox_id", sandboxID, "workspace_id", workspaceID, "err", serr)
			b.appendLog(bg, workspaceID, "sandbox not started again: "+serr.Error())
		}
	}
	if err != nil {
		return b.failPromote(bg, workspaceID, sandboxID, err)
	}
	now := time.Now().UTC()
	pb, err := b.st.UpdatePrebuild(bg, workspaceID, func(p *store.Prebuild) {
		p.Status, p.Ready, p.Commits, p.BuiltAt, p.CheckedAt, p.Stale, p.BuildID, p.Error =
			store.PrebuildReady, true, commits, &now, &now, false, "", ""
		p.Source, p.SourceSandboxID = store.SourcePromote, sandboxID
		p.Log += fmt.Sprintf("%s prebuild saved in %s\n", now.Format(time.TimeOnly), time.Since(begin).Round(time.Millisecond))
	})
	if err != nil {
		return pb, fmt.Errorf("promote %s: prebuild saved but not recorded: %w", sandboxID, err)
	}
	b.log.Info("sandbox promoted to prebuild", "workspace_id", workspaceID, "sandbox_id", sandboxID, "took_ms", time.Since(begin).Milliseconds())
	return pb, nil
}

// settle records a build that ended without a new prebuild: cancelled
// (back to ready or none) or failed; the ready prebuild is untouched.
func (b *Prebuilds) settle(ctx context.Context, workspaceID, sandboxID string, cause error) (store.Prebuild, error) {
	if errors.Is(cause, ErrCancelled) {
		b.log.Info("prebuild cancelled", "workspace_id", workspaceID, "sandbox_id", sandboxID)
	} else {
		b.log.Warn("prebuild failed", "workspace_id", workspaceID, "sandbox_id", sandboxID, "err", cause)
	}
	return b.st.UpdatePrebuild(ctx, workspaceID, func(p *store.Prebuild) {
		p.BuildID = ""
		switch {
		case errors.Is(cause, ErrCancelled) && p.Ready:
			p.Status, p.Error = store.PrebuildReady, ""
		case errors.Is(cause, ErrCancelled):
			p.Status, p.Error = store.PrebuildNone, ""
		default:
			p.Status, p.Error = store.PrebuildFailed, truncate(cause.Error(), 500)
		}
		p.Log += time.Now().UTC().Format(time.TimeOnly) + " " + truncate(cause.Error(), 500) + "\n"
	})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Recover settles builds a manager restart interrupted: their sandbox is
// destroyed and the status failed, the ready prebuild kept. Run at start,
// before anything can begin a build. One manager only: on a shared store
// the others' builds are live, and the leader runs RecoverStale instead.
func (b *Prebuilds) Recover(ctx context.Context) error { return b.RecoverStale(ctx, 0) }

// RecoverStale settles, like Recover, the builds no manager runs any more:
// those not running in this process whose row has not been touched for
// olderThan. Every replica touches the builds it runs (Touch) more often
// than that, so only a dead replica's builds qualify; the leader runs this
// with the lease's TTL, so one manager settles each.
func (b *Prebuilds) RecoverStale(ctx context.Context, olderThan time.Duration) error {
	list, err := b.st.ListPrebuilds(ctx)
	if err != nil {
		return err
	}
	for _, p := range list {
		if p.Status != store.PrebuildBuilding {
			continue
		}
		if olderThan > 0 && (b.runs(p.WorkspaceID) || time.Since(p.UpdatedAt) < olderThan) {
			continue
		}
		b.log.Info("settling a prebuild no manager runs", "workspace_id", p.WorkspaceID, "sandbox_id", p.BuildID)
		if p.BuildID != "" {
			if err := b.sbx.Destroy(ctx, p.BuildID); err != nil && !errors.Is(err, store.ErrNotFound) {
				b.log.Warn("interrupted prebuild's sandbox not destroyed", "sandbox_id", p.BuildID, "err", err)
			}
		}
		if _, err := b.settle(ctx, p.WorkspaceID, p.BuildID, errors.New("interrupted by a manager restart")); err != nil {
			return err
		}
	}
	return nil
}

func (b *Prebuilds) runs(workspaceID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running[workspaceID] != nil
}

// Touch marks the builds running in this process as alive now, for the
// leader's RecoverStale on a shared store.
func (b *Prebuilds) Touch(ctx context.Context) error {
	b.mu.Lock()
	ids := make([]string, 0, len(b.running))
	for id := range b.running {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	var errs []error
	for _, id := range ids {
		_, err := b.st.UpdatePrebuild(ctx, id, func(*store.Prebuild) {})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Check compares the ready prebuild's commits with the tracked branches
// (git ls-remote on the host) and rebuilds when one moved. It reports
// whether the prebuild was stale.
func (b *Prebuilds) Check(ctx context.Context, workspaceID string) (bool, error) {
	pb, err := b.st.GetPrebuild(ctx, workspaceID)
	if err != nil {
		return false, err
	}
	if !pb.Ready || pb.Status == store.PrebuildBuilding {
		return false, nil
	}
	w, err := b.ws.Get(ctx, workspaceID)
	if err != nil {
		return false, err
	}
	stale := false
	for _, r := range w.Config.Repos {
		u, _ := url.Parse(r.URL)
		var cred Credential
		if r.SourceID != "" {
			if cred, err = b.ws.Credential(ctx, w.OwnerID, r.SourceID, sourceKey(u)); err != nil {
				return false, err
			}
		}
		heads, err := LsRemote(ctx, r.URL, r.Branch, cred)
		if err != nil {
			return false, err
		}
		if heads[r.Branch] != pb.Commits[r.Path] {
			stale = true
		}
	}
	now := time.Now().UTC()
	if _, err := b.st.UpdatePrebuild(ctx, workspaceID, func(p *store.Prebuild) { p.CheckedAt, p.Stale = &now, stale }); err != nil {
		return stale, err
	}
	if stale {
		b.log.Info("prebuild stale: rebuilding", "workspace_id", workspaceID)
		if _, err := b.Start(ctx, workspaceID); err != nil && !errors.Is(err, store.ErrBusy) {
			return stale, err
		}
	}
	return stale, nil
}

// Loop checks every ready prebuild each interval until ctx ends.
func (b *Prebuilds) Loop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if b.Leading != nil && !b.Leading() {
			continue
		}
		list, err := b.st.ListPrebuilds(ctx)
		if err != nil {
			b.log.Warn("prebuild check", "err", err)
			continue
		}
		for _, p := range list {
			if _, err := b.Check(ctx, p.WorkspaceID); err != nil {
				b.log.Warn("prebuild check", "workspace_id", p.WorkspaceID, "err", err)
			}
		}
	}
}
