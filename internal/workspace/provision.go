package workspace

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"atelier/internal/agent"
	"atelier/internal/edge"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
	"atelier/internal/store"
)

// Timeouts of the guest commands a create runs.
const (
	cloneTimeout = 10 * time.Minute
	initTimeout  = 10 * time.Minute
	quickTimeout = 30 * time.Second
)

// WorkdirName is the directory under the image user's home that holds the
// workspace's repositories and SANDBOX.md.
const WorkdirName = "workspace"

// Credential is what a clone authenticates with: a username and a token.
type Credential struct {
	Username string
	Token    string
}

// Provisioner is the sandbox.Provisioner of workspaces.
type Provisioner struct {
	Workspaces *Service
	Store      *store.Store
	// User runs the guest commands and owns the files: the image user
	// ("dev"), or "" for the agent's own user (mock mode).
	User string
	// Expose routes a dev command's hosts and returns their URLs; Unexpose
	// removes them. nil: dev commands are started but not exposed.
	Expose   func(ctx context.Context, sandboxID string, d edge.DevExposure) ([]string, error)
	Unexpose func(ctx context.Context, sandboxID, name string) error
	// View renders the sandbox for SANDBOX.md (its URLs).
	View func(store.Sandbox) sandbox.View
	Log  *slog.Logger
	// NoPrebuildStart keeps creates on the clone-and-init path even with a
	// ready prebuild: in mock mode a sandbox's files are not on its volume,
	// so a prebuild volume would bring back none of them.
	NoPrebuildStart bool
	// Pull fast-forwards a sandbox's repositories in the background after
	// a create from a prebuild; nil leaves them at the prebuild's commits.
	Pull *Puller
	// NpmRegistry returns the npm cache's URL while it serves, else "";
	// nil: no cache. A build's npm warm-up installs through it.
	NpmRegistry func() string
}

var _ sandbox.Provisioner = (*Provisioner)(nil)

// Prepare refuses a workspace the caller does not own and fills the
// request's defaults from it.
func (p *Provisioner) Prepare(ctx context.Context, req *sandbox.CreateRequest) error {
	notFound := &sandbox.FieldError{Field: "workspaceId", Message: "no workspace " + req.WorkspaceID + " of yours"}
	if !ids.ValidSandboxID(req.WorkspaceID) {
		return &sandbox.FieldError{Field: "workspaceId", Message: "must be 12 characters [a-z0-9]"}
	}
	w, err := p.Workspaces.Get(ctx, req.WorkspaceID)
	if errors.Is(err, store.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	// Not even an admin: the sandbox would receive the owner's secrets and tokens.
	if w.OwnerID != req.OwnerID {
		return notFound
	}
	if req.Image == "" {
		req.Image = w.Config.Image
	}
	if req.Vcpus == 0 {
		req.Vcpus = w.Config.Vcpus
	}
	if req.MemoryMB == 0 {
		req.MemoryMB = w.Config.MemoryMB
	}
	if req.Mode == sandbox.FromImage && !p.NoPrebuildStart && len(w.Config.Repos)+len(w.Config.InitCommands) > 0 {
		pb, err := p.Store.GetPrebuild(ctx, w.ID)
		if err != nil {
			return err
		}
		if pb.Ready {
			req.Mode = sandbox.FromPrebuild
		}
	}
	return nil
}

// guest is what the steps learn and share while provisioning one sandbox.
type guest struct {
	home    string
	workdir string
	devURLs map[string][]string
}

// Steps returns the create steps of sb's workspace: config and variables,
// secret files, one clone per repository (the lifecycle's own git step set the owner's identity before), the init commands,
// one step per dev command, SANDBOX.md.
func (p *Provisioner) Steps(ctx context.Context, sb store.Sandbox, mode sandbox.ProvisionMode) ([]sandbox.ProvisionStep, error) {
	w, err := p.Workspaces.Get(ctx, sb.WorkspaceID)
	if err != nil {
		return nil, fmt.Errorf("workspace %s: %w", sb.WorkspaceID, err)
	}
	if w.OwnerID != sb.OwnerID {
		return nil, fmt.Errorf("workspace %s belongs to another user", sb.WorkspaceID)
	}
	// A build's disk becomes the prebuild: nothing secret goes on it.
	sec := Secrets{Env: map[string]string{}}
	if mode != sandbox.Build {
		if sec, err = p.Workspaces.OpenSecrets(ctx, w.ID); err != nil {
			return nil, err
		}
	}
	g := &guest{devURLs: map[string][]string{}}
	cfg := w.Config
	steps := []sandbox.ProvisionStep{
		{Name: "ws-config", Detail: fmt.Sprintf("%d variables, %d secret", len(cfg.Env), len(sec.Env)),
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.config(ctx, c, g, sb, w, sec) }},
	}
	steps = append(steps, sandbox.ProvisionStep{Name: "ws-git-credential",
		Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.gitCredential(ctx, c) }})
	if len(sec.Files) > 0 {
		steps = append(steps, sandbox.ProvisionStep{Name: "ws-secret-files", Detail: fmt.Sprintf("%d files", len(sec.Files)),
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.secretFiles(ctx, c, g, sec.Files) }})
	}
	if mode == sandbox.FromPrebuild {
		// The prebuild holds the clones and the init commands' results.
		cfg.Repos, cfg.InitCommands = nil, nil
	}
	if mode == sandbox.Build {
		cfg.DevCommands = nil
	}
	for i, r := range cfg.Repos {
		steps = append(steps, sandbox.ProvisionStep{Name: fmt.Sprintf("ws-clone-%d", i), Detail: r.URL + "#" + r.Branch,
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.clone(ctx, c, g, sb.OwnerID, r) }})
	}
	for i, cmd := range cfg.InitCommands {
		steps = append(steps, sandbox.ProvisionStep{Name: fmt.Sprintf("ws-init-%d", i),
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.initCommand(ctx, c, g, cmd) }})
	}
	if mode == sandbox.Build {
		if cfg.UseNpmCache && len(cfg.Repos) > 0 {
			steps = append(steps, sandbox.ProvisionStep{Name: "ws-warm-npm",
				Run: func(ctx context.Context, c *agent.Client) (string, error) {
					return p.warmNpm(ctx, c, g, sb.ID, cfg.Repos)
				}})
		}
		steps = append(steps, sandbox.ProvisionStep{Name: "ws-warm-opencode",
			Run: func(ctx context.Context, c *agent.Client) (string, error) {
				return p.warmOpenCode(ctx, c, g, sb.ID, cfg.Repos)
			}})
	}
	for _, d := range cfg.DevCommands {
		st := sandbox.ProvisionStep{Name: "ws-dev-" + d.Name, Detail: fmt.Sprintf("port %d", d.Port),
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.dev(ctx, c, g, sb.ID, d) }}
		if d.Port != 0 && p.Unexpose != nil {
			st.Undo = func(ctx context.Context) error { return p.Unexpose(ctx, sb.ID, d.Name) }
		}
		steps = append(steps, st)
	}
	if mode == sandbox.FromPrebuild && p.Pull != nil && len(w.Config.Repos) > 0 {
		steps = append(steps, sandbox.ProvisionStep{Name: "ws-pull", Detail: fmt.Sprintf("%d repositories", len(w.Config.Repos)),
			Run: func(ctx context.Context, c *agent.Client) (string, error) {
				p.Pull.Start(sb, w, g.workdir)
				return "in the background once running (event " + EventPull + ")", nil
			}})
	}
	if mode != sandbox.Build {
		steps = append(steps, sandbox.ProvisionStep{Name: "ws-sandbox-md",
			Run: func(ctx context.Context, c *agent.Client) (string, error) { return p.sandboxMD(ctx, c, g, sb, w, sec) }})
	}
	return steps, nil
}

func (p *Provisioner) exec(ctx context.Context, c *agent.Client, req agent.ExecRequest, what string) (*agent.ExecResult, error) {
	req.User = p.User
	res, err := c.Exec(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if res.ExitCode != 0 {
		return res, fmt.Errorf("%s: exit %d: %s", what, res.ExitCode, lastLine(res.Stderr))
	}
	return res, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// config stores the sandbox's config with the variables in the agent,
// which gives them to every process it starts, and finds the user's home.
func (p *Provisioner) config(ctx context.Context, c *agent.Client, g *guest, sb store.Sandbox, w Workspace, sec Secrets) (string, error) {
	env := map[string]string{}
	for k, v := range w.Config.Env {
		env[k] = v
	}
	for k, v := range sec.Env {
		env[k] = v
	}
	type repo struct {
		Path   string `json:"path"`
		Branch string `json:"branch"`
		URL    string `json:"url"`
	}
	repos := make([]repo, 0, len(w.Config.Repos))
	for _, r := range w.Config.Repos {
		repos = append(repos, repo{Path: r.Path, Branch: r.Branch, URL: r.URL})
	}
	if _, err := c.PutConfig(ctx, map[string]any{
		"sandboxId": sb.ID, "workspaceId": w.ID, "workspaceName": w.Name, "repos": repos,
		"createdAt": sb.CreatedAt, "env": env,
	}); err != nil {
		return "", fmt.Errorf("store sandbox config: %w", err)
	}
	res, err := p.exec(ctx, c, agent.ExecRequest{Argv: []string{"sh", "-c", `printf %s "$HOME"`}, TimeoutMs: quickTimeout.Milliseconds()}, "find home")
	if err != nil {
		return "", err
	}
	g.home = strings.TrimSpace(res.Stdout)
	if !path.IsAbs(g.home) {
		return "", fmt.Errorf("find home: %q is not absolute", g.home)
	}
	g.workdir = path.Join(g.home, WorkdirName)
	if _, err := c.Mkdir(ctx, agent.MkdirRequest{Path: g.workdir, Parents: true, Owner: p.User}); err != nil {
		return "", fmt.Errorf("make workdir: %w", err)
	}
	return g.workdir, nil
}

func (g *guest) expand(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return path.Join(g.home, rest)
	}
	return p
}

// secretFiles writes the secret files as the image user with their modes;
// the journal records their count only.
func (p *Provisioner) secretFiles(ctx context.Context, c *agent.Client, g *guest, files []OpenFile) (string, error) {
	batch := make([]agent.FileWrite, 0, len(files))
	for _, f := range files {
		batch = append(batch, agent.FileWrite{Path: g.expand(f.Path), Content: encodeB64(f.Content), Encoding: "base64",
			Mode: fmt.Sprintf("%04o", f.Mode), Owner: p.User, Parents: true})
	}
	res, err := c.WriteFiles(ctx, batch)
	if err != nil {
		return "", fmt.Errorf("write secret files: %w", err)
	}
	if err := res.Err(); err != nil {
		return "", fmt.Errorf("write secret files: %w", err)
	}
	return fmt.Sprintf("%d files", len(files)), nil
}

// credentialHelper answers git's credential requests from variables of the
// command's own environment, and only for ATELIER_GIT_HOST: the token is
// never in argv, a URL, a config file or any file in the guest. The empty
// helper before it drops any helper the image or user configured (a
// "store" helper would save the token).
const credentialHelper = `!f() { test "$1" = get || exit 0; h=; while IFS= read -r l; do case "$l" in host=*) h=${l#host=};; esac; done; ` +
	`test -n "$ATELIER_GIT_TOKEN" && test "$h" = "$ATELIER_GIT_HOST" || exit 0; ` +
	`printf 'username=%s\npassword=%s\n' "$ATELIER_GIT_USERNAME" "$ATELIER_GIT_TOKEN"; }; f`

// gitCredential makes the agent binary the user's only git credential
// helper: a later pull or push asks the agent, which asks the host (see
// CredentialBroker). The empty entry drops helpers configured before it
// (the image's "store" would write the token to a file); the config holds
// the helper's command line only, never a token.
func (p *Provisioner) gitCredential(ctx context.Context, c *agent.Client) (string, error) {
	helper, err := c.GitCredentialHelper(ctx)
	if err != nil {
		return "", fmt.Errorf("git credential helper: %w", err)
	}
	for i, argv := range [][]string{
		{"git", "config", "--global", "--replace-all", "credential.helper", ""},
		{"git", "config", "--global", "--add", "credential.helper", helper},
	} {
		if _, err := p.exec(ctx, c, agent.ExecRequest{Argv: argv, TimeoutMs: quickTimeout.Milliseconds()}, "git config credential.helper"); err != nil {
			// An image without git has no git to configure.
			var ae *agent.Error
			if i == 0 && errors.As(err, &ae) && ae.Field == "argv" {
				return "no git in the image", nil
			}
			return "", err
		}
	}
	return helper, nil
}

// clone clones one repository into the workdir.
func (p *Provisioner) clone(ctx context.Context, c *agent.Client, g *guest, owner string, r Repo) (string, error) {
	dest := path.Join(g.workdir, r.Path)
	u, err := url.Parse(r.URL)
	if err != nil {
		return "", fmt.Errorf("repository url: %w", err)
	}
	var cred Credential
	if r.SourceID != "" {
		if cred, err = p.Workspaces.Credential(ctx, owner, r.SourceID, sourceKey(u)); err != nil {
			return "", fmt.Errorf("git source %s: %w", r.SourceID, err)
		}
	}
	argv := append(append([]string{"git"}, gitAuthArgs()...), "clone", "--branch", r.Branch, "--single-branch", "--", r.URL, dest)
	if _, err := p.exec(ctx, c, agent.ExecRequest{Argv: argv, Env: credentialEnv(u.Host, cred),
		TimeoutMs: cloneTimeout.Milliseconds()}, "clone "+r.URL); err != nil {
		return "", err
	}
	head, err := p.exec(ctx, c, agent.ExecRequest{Argv: []string{"git", "-C", dest, "rev-parse", "HEAD"},
		TimeoutMs: quickTimeout.Milliseconds()}, "rev-parse")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(head.Stdout), nil
}

// initCommand runs one init command in the workdir, in a login shell as
// the user would type it.
func (p *Provisioner) initCommand(ctx context.Context, c *agent.Client, g *guest, cmd string) (string, error) {
	res, err := p.exec(ctx, c, agent.ExecRequest{Shell: cmd, Login: true, Cwd: g.workdir, TimeoutMs: initTimeout.Milliseconds(),
		MaxOutputBytes: 64 << 10}, "init command")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("exit 0, %d bytes of output", len(res.Stdout)+len(res.Stderr)), nil
}

// dev starts a dev command under the agent's supervision and exposes it.
func (p *Provisioner) dev(ctx context.Context, c *agent.Client, g *guest, sandboxID string, d DevCommand) (string, error) {
	cwd := g.workdir
	if d.Cwd != "" {
		cwd = path.Join(g.workdir, d.Cwd)
	}
	if _, err := c.StartDev(ctx, d.Name, agent.ProcessSpec{Shell: d.Command, Login: true, Cwd: cwd, User: p.User,
		Port: d.Port, Restart: "on-failure"}); err != nil {
		return "", fmt.Errorf("start dev command %s: %w", d.Name, err)
	}
	if d.Port == 0 || p.Expose == nil {
		return "started", nil
	}
	ex := edge.DevExposure{Name: d.Name, Port: d.Port, Default: d.Default, Public: d.Public}
	for _, a := range d.Aliases {
		ex.Aliases = append(ex.Aliases, edge.DevAlias{Alias: a.Alias, Port: a.Port})
	}
	urls, err := p.Expose(ctx, sandboxID, ex)
	if err != nil {
		return "", fmt.Errorf("expose dev command %s: %w", d.Name, err)
	}
	g.devURLs[d.Name] = urls
	return strings.Join(urls, " "), nil
}

// sandboxMD writes a short description of the sandbox for the people and
// coding agents working in it. Secret values never appear, only names.
func (p *Provisioner) sandboxMD(ctx context.Context, c *agent.Client, g *guest, sb store.Sandbox, w Workspace, sec Secrets) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Sandbox %s\n\nWorkspace **%s** (%s). Repositories are under `%s`.\n\n", sb.ID, w.Name, w.ID, g.workdir)
	if p.View != nil {
		running := sb
		running.Status, running.IP = store.StatusRunning, "set"
		if v := p.View(running); v.URLs != nil {
			fmt.Fprintf(&b, "## Reaching it\n\n- VS Code: %s\n- OpenCode: %s\n- Browser: %s\n- SSH: `%s`\n\n",
				v.URLs.VSCode, v.URLs.OpenCode, v.URLs.Browser, v.URLs.SSH)
		}
	}
	if len(w.Config.Repos) > 0 {
		b.WriteString("## Repositories\n\n")
		for _, r := range w.Config.Repos {
			fmt.Fprintf(&b, "- `%s`: %s, branch `%s`\n", path.Join(g.workdir, r.Path), r.URL, r.Branch)
		}
		b.WriteString("\n")
	}
	if len(w.Config.DevCommands) > 0 {
		b.WriteString("## Dev commands\n\nStarted with the sandbox and restarted if they fail; logs: " +
			"`atelier sandbox dev logs " + sb.ID + " NAME`.\n\n")
		for _, d := range w.Config.DevCommands {
			fmt.Fprintf(&b, "- **%s**: `%s`", d.Name, d.Command)
			if d.Port != 0 {
				fmt.Fprintf(&b, " on port %d", d.Port)
			}
			if urls := g.devURLs[d.Name]; len(urls) > 0 {
				fmt.Fprintf(&b, ", at %s", strings.Join(urls, ", "))
			}
			b.WriteString("\n")
		}
		b.WriteString("\nA server must listen on 0.0.0.0 (or the port given) to be reached through its URL.\n\n")
	}
	names := make([]string, 0, len(w.Config.Env)+len(sec.Env))
	for k := range w.Config.Env {
		names = append(names, k)
	}
	for k := range sec.Env {
		names = append(names, k+" (secret)")
	}
	sort.Strings(names)
	if len(names) > 0 {
		fmt.Fprintf(&b, "## Environment\n\nEvery shell, terminal and command started in the sandbox has: %s.\n\n", strings.Join(names, ", "))
	}
	if len(sec.Files) > 0 {
		b.WriteString("## Secret files\n\n")
		for _, f := range sec.Files {
			fmt.Fprintf(&b, "- `%s`\n", g.expand(f.Path))
		}
		b.WriteString("\n")
	}
	dest := path.Join(g.workdir, "SANDBOX.md")
	res, err := c.WriteFiles(ctx, []agent.FileWrite{{Path: dest, Content: b.String(), Mode: "0644", Owner: p.User}})
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return "", fmt.Errorf("write SANDBOX.md: %w", err)
	}
	return dest, nil
}

func encodeB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
