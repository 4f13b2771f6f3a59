package workspace

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"atelier/internal/agent"
	"atelier/internal/store"
)

// EventPull is the event a background pull publishes when it is done
// (data: PullReport). It carries ownerId, so only the owner (and admins)
// see it on /api/events.
const EventPull = "workspace.pull"

// pullTimeout bounds one sandbox's background pull, all repositories.
const pullTimeout = 10 * time.Minute

// Results of one repository's pull.
const (
	PullUpdated = "updated" // fast-forwarded
	PullCurrent = "current" // already at the branch's head
	PullSkipped = "skipped" // left alone: local changes, local commits, another branch, no repository
	PullFailed  = "failed"  // fetch or merge failed; the repository is as it was
)

// PullReport is what a background pull did, per repository.
type PullReport struct {
	OwnerID     string       `json:"ownerId"`
	SandboxID   string       `json:"sandboxId"`
	WorkspaceID string       `json:"workspaceId"`
	Repos       []RepoPulled `json:"repos"`
}

// RepoPulled is one repository's result.
type RepoPulled struct {
	Path   string `json:"path"`
	Branch string `json:"branch"`
	Result string `json:"result" enum:"updated,current,skipped,failed"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Puller fast-forwards, in the background, the repositories of a sandbox
// created from a prebuild: they hold the prebuild's commits, and the
// tracked branches may have moved since. The create does not wait for it.
type Puller struct {
	Workspaces *Service
	// User runs git in the guest (Provisioner.User).
	User string
	// Wait returns once the sandbox has settled (sandbox.Service.Wait).
	Wait func(ctx context.Context, id string) (store.Sandbox, error)
	// Agent reaches the sandbox's agent (sandbox.Service.Agent).
	Agent func(ctx context.Context, id string) (*agent.Client, error)
	// Publish sends the report as an event; nil: logged only.
	Publish func(ctx context.Context, typ, sandboxID string, data any) error
	Log     *slog.Logger

	once   sync.Once
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (p *Puller) init() {
	p.once.Do(func() {
		p.ctx, p.cancel = context.WithCancel(context.Background())
		if p.Log == nil {
			p.Log = slog.Default()
		}
	})
}

// Start pulls sb's repositories under workdir once sb is running. It
// returns at once; a stopped Puller starts nothing.
func (p *Puller) Start(sb store.Sandbox, w Workspace, workdir string) {
	p.init()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return
	}
	p.wg.Go(func() {
		ctx, cancel := context.WithTimeout(p.ctx, pullTimeout)
		defer cancel()
		p.run(ctx, sb, w, workdir)
	})
}

// Stop cancels the pulls under way and waits for them (shutdown).
func (p *Puller) Stop() {
	p.init()
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Puller) run(ctx context.Context, sb store.Sandbox, w Workspace, workdir string) {
	log := p.Log.With("sandbox_id", sb.ID, "workspace_id", w.ID)
	got, err := p.Wait(ctx, sb.ID)
	if err != nil || got.Status != store.StatusRunning {
		log.Debug("background pull not run: the sandbox is not running", "status", got.Status, "err", err)
		return
	}
	c, err := p.Agent(ctx, sb.ID)
	if err != nil {
		log.Warn("background pull: no agent", "err", err)
		return
	}
	rep := PullReport{OwnerID: sb.OwnerID, SandboxID: sb.ID, WorkspaceID: w.ID}
	begin := time.Now()
	for _, r := range w.Config.Repos {
		res := p.pullRepo(ctx, c, sb.OwnerID, path.Join(workdir, r.Path), r)
		res.Path, res.Branch = r.Path, r.Branch
		rep.Repos = append(rep.Repos, res)
		lvl := slog.LevelInfo
		if res.Result == PullFailed {
			lvl = slog.LevelWarn
		}
		log.Log(ctx, lvl, "background pull", "repo", r.Path, "result", res.Result, "from", res.From, "to", res.To, "detail", res.Detail)
	}
	log.Info("background pull done", "repos", len(rep.Repos), "took_ms", time.Since(begin).Milliseconds())
	if p.Publish != nil {
		if err := p.Publish(context.WithoutCancel(ctx), EventPull, sb.ID, rep); err != nil {
			log.Warn("background pull event", "err", err)
		}
	}
}

// pullNoHooks keeps the guest's hooks and fsmonitor out of the git runs a
// pull makes: the user did not start them, and they run beside a token.
var pullNoHooks = []string{"-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"}

// pullRepo fast-forwards one repository to its tracked branch, or leaves
// it alone: a tree with changes to tracked files, a checkout of another
// branch or a history with local commits is the user's work.
func (p *Puller) pullRepo(ctx context.Context, c *agent.Client, owner, dir string, r Repo) RepoPulled {
	run := func(env map[string]string, argv ...string) (string, error) {
		full := append(append(append([]string{"git"}, pullNoHooks...), "-C", dir), argv...)
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: full, Env: env, User: p.User, TimeoutMs: cloneTimeout.Milliseconds(),
			MaxOutputBytes: 64 << 10})
		if err != nil {
			return "", err
		}
		if res.ExitCode != 0 {
			return strings.TrimSpace(res.Stdout), fmt.Errorf("git %s: exit %d: %s", argv[0], res.ExitCode, lastLine(res.Stderr))
		}
		return strings.TrimSpace(res.Stdout), nil
	}
	skip := func(why string) RepoPulled { return RepoPulled{Result: PullSkipped, Detail: why} }
	fail := func(err error) RepoPulled { return RepoPulled{Result: PullFailed, Detail: truncate(err.Error(), 300)} }

	head, err := run(nil, "rev-parse", "--verify", "HEAD")
	if err != nil {
		return skip("not a repository: " + truncate(err.Error(), 200))
	}
	out := RepoPulled{From: head}
	if branch, err := run(nil, "symbolic-ref", "--quiet", "--short", "HEAD"); err != nil || branch != r.Branch {
		out.Result, out.Detail = PullSkipped, fmt.Sprintf("checked out %q, not %s", branch, r.Branch)
		return out
	}
	// Untracked files (node_modules, build output) do not count: a merge
	// that would overwrite one refuses on its own.
	if st, err := run(nil, "status", "--porcelain", "--untracked-files=no"); err != nil {
		return fail(err)
	} else if st != "" {
		out.Result, out.Detail = PullSkipped, "local changes to tracked files"
		return out
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return fail(fmt.Errorf("repository url: %w", err))
	}
	var cred Credential
	if r.SourceID != "" {
		if cred, err = p.Workspaces.Credential(ctx, owner, r.SourceID, sourceKey(u)); err != nil {
			return fail(fmt.Errorf("git source %s: %w", r.SourceID, err))
		}
	}
	// The workspace's URL, not the guest's remote: a remote the guest
	// pointed elsewhere gets no fetch and no token. The token is in this
	// one process's environment, answered only for the source's host.
	fetch := append(gitAuthArgs(), "fetch", "--quiet", "--no-tags", "--", r.URL, "+refs/heads/"+r.Branch+":refs/remotes/origin/"+r.Branch)
	if _, err := run(credentialEnv(u.Host, cred), fetch...); err != nil {
		return fail(err)
	}
	tip, err := run(nil, "rev-parse", "--verify", "refs/remotes/origin/"+r.Branch)
	if err != nil {
		return fail(err)
	}
	out.To = tip
	if tip == head {
		out.Result = PullCurrent
		return out
	}
	if _, err := run(nil, "merge-base", "--is-ancestor", "HEAD", tip); err != nil {
		out.Result, out.Detail = PullSkipped, "local commits not on "+r.Branch
		return out
	}
	if _, err := run(nil, "merge", "--ff-only", "--quiet", tip); err != nil {
		out.Result, out.Detail = PullFailed, truncate(err.Error(), 300)
		return out
	}
	out.Result = PullUpdated
	return out
}
