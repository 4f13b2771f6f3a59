package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"atelier/internal/client"
	"atelier/internal/workspace"
)

// wsFlags are the flags create and update share. A list flag given on
// update replaces that whole list; one not given keeps it.
type wsFlags struct {
	file        string
	repos       []string
	image       string
	vcpus       int
	memory      int
	inits       []string
	devs        []string
	env         []string
	secretEnv   []string
	secretFiles []string
	npmCache    bool
	deletes     []string
}

func (f *wsFlags) register(cmd *cobra.Command, update bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.file, "file", "", "JSON file with the workspace's config (the API's config object); flags override it")
	fl.StringArrayVar(&f.repos, "repo", nil, "repository to clone: URL[#BRANCH] (repeatable)")
	fl.StringVar(&f.image, "image", "", "image of its sandboxes")
	fl.IntVar(&f.vcpus, "vcpus", 0, "vCPUs of its sandboxes")
	fl.IntVar(&f.memory, "memory", 0, "memory of its sandboxes in MiB")
	fl.StringArrayVar(&f.inits, "init", nil, "command run once after the clone, in order (repeatable)")
	fl.StringArrayVar(&f.devs, "dev", nil, "dev command NAME[:PORT]=COMMAND, started and exposed on dev-NAME-<id> (repeatable)")
	fl.StringArrayVar(&f.env, "env", nil, "environment variable KEY=VALUE (repeatable; not secret)")
	fl.StringArrayVar(&f.secretEnv, "secret-env", nil, "secret variable KEY (value from your environment's KEY) or KEY=VALUE (repeatable)")
	fl.StringArrayVar(&f.secretFiles, "secret-file", nil, "secret file GUEST_PATH=LOCAL_FILE, e.g. ~/.npmrc=./npmrc (repeatable)")
	fl.BoolVar(&f.npmCache, "npm-cache", false, "point npm at the host's shared package cache")
	if update {
		fl.StringArrayVar(&f.deletes, "delete-secret", nil, "secret variable name or file path to remove (repeatable)")
	}
}

// apply sets on cfg what the flags say; changed tells which were given.
func (f *wsFlags) apply(cmd *cobra.Command, cfg *workspace.Config) error {
	changed := cmd.Flags().Changed
	if f.file != "" {
		b, err := os.ReadFile(f.file)
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		*cfg = workspace.Config{}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return fmt.Errorf("--file %s: %w", f.file, err)
		}
	}
	if changed("repo") {
		cfg.Repos = nil
		for _, r := range f.repos {
			u, branch, _ := strings.Cut(r, "#")
			cfg.Repos = append(cfg.Repos, workspace.Repo{URL: u, Branch: branch})
		}
	}
	if changed("image") {
		cfg.Image = f.image
	}
	if changed("vcpus") {
		cfg.Vcpus = f.vcpus
	}
	if changed("memory") {
		cfg.MemoryMB = f.memory
	}
	if changed("init") {
		cfg.InitCommands = f.inits
	}
	if changed("npm-cache") {
		cfg.UseNpmCache = f.npmCache
	}
	if changed("dev") {
		cfg.DevCommands = nil
		for _, d := range f.devs {
			head, command, ok := strings.Cut(d, "=")
			if !ok || command == "" {
				return fmt.Errorf("--dev %q: want NAME[:PORT]=COMMAND", d)
			}
			name, port, hasPort := strings.Cut(head, ":")
			dc := workspace.DevCommand{Name: name, Command: command}
			if hasPort {
				p, err := strconv.Atoi(port)
				if err != nil {
					return fmt.Errorf("--dev %q: port %q is not a number", d, port)
				}
				dc.Port = p
			}
			cfg.DevCommands = append(cfg.DevCommands, dc)
		}
		if len(cfg.DevCommands) > 0 && cfg.DevCommands[0].Port != 0 {
			cfg.DevCommands[0].Default = true
		}
	}
	if changed("env") {
		cfg.Env = map[string]string{}
		for _, kv := range f.env {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--env %q: want KEY=VALUE", kv)
			}
			cfg.Env[k] = v
		}
	}
	return nil
}

// secrets reads the secret flags. A bare KEY takes the value from the
// environment, so it need not appear in the shell history or process list.
func (f *wsFlags) secrets() (map[string]string, []workspace.SecretFile, error) {
	var env map[string]string
	for _, kv := range f.secretEnv {
		if env == nil {
			env = map[string]string{}
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			val, set := os.LookupEnv(k)
			if !set {
				return nil, nil, fmt.Errorf("--secret-env %s: no variable %s in your environment (or give %s=VALUE)", k, k, k)
			}
			v = val
		}
		env[k] = v
	}
	var files []workspace.SecretFile
	for _, pf := range f.secretFiles {
		guest, local, ok := strings.Cut(pf, "=")
		if !ok {
			return nil, nil, fmt.Errorf("--secret-file %q: want GUEST_PATH=LOCAL_FILE", pf)
		}
		b, err := os.ReadFile(local)
		if err != nil {
			return nil, nil, fmt.Errorf("--secret-file %s: %w", guest, err)
		}
		files = append(files, workspace.SecretFile{Path: guest, Content: string(b)})
	}
	return env, files, nil
}

// wsFieldFlags names the flag behind each body field the API may refuse.
var wsFieldFlags = []struct{ prefix, flag string }{
	{"config.repos", "--repo"}, {"config.devCommands", "--dev"}, {"config.initCommands", "--init"},
	{"config.env", "--env"}, {"config.image", "--image"}, {"config.vcpus", "--vcpus"},
	{"config.memoryMb", "--memory"}, {"config", "--file"}, {"secretEnv", "--secret-env"},
	{"secretFiles", "--secret-file"}, {"deleteSecrets", "--delete-secret"}, {"name", "NAME"},
}

// wsFlagError turns a 400 into a message naming the flag and the key.
func wsFlagError(err error) error {
	var e *client.Error
	if !errors.As(err, &e) {
		return err
	}
	for _, fe := range e.Errors {
		loc := strings.TrimPrefix(fe.Location, "body.")
		for _, m := range wsFieldFlags {
			if loc == m.prefix || strings.HasPrefix(loc, m.prefix+".") || strings.HasPrefix(loc, m.prefix+"[") {
				return fmt.Errorf("%s (%s): %s", m.flag, loc, fe.Message)
			}
		}
	}
	return err
}

func newWorkspaceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Aliases: []string{"workspaces", "ws"},
		Short: "Workspaces: what a sandbox clones and how it is set up (atelier create --workspace NAME)"}

	var cf wsFlags
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a workspace",
		Example: "  atelier workspace create web --repo https://git.example.com/acme/web.git#main \\\n" +
			"      --init 'npm ci' --dev web:3000='npm run dev' --secret-env NPM_TOKEN",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg workspace.Config
			if err := cf.apply(cmd, &cfg); err != nil {
				return err
			}
			env, files, err := cf.secrets()
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var w workspace.Workspace
			body := map[string]any{"name": args[0], "config": cfg, "secretEnv": env, "secretFiles": files}
			if err := c.Do(cmd.Context(), "POST", "/api/workspaces", body, &w); err != nil {
				return wsFlagError(err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created workspace %s (id %s)\n", w.Name, w.ID)
			return nil
		},
	}
	cf.register(create, false)

	var uf wsFlags
	var rename string
	update := &cobra.Command{
		Use:   "update ID|NAME",
		Short: "Change a workspace (flags given replace those settings; others are kept)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.workspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			cfg := w.Config
			if err := uf.apply(cmd, &cfg); err != nil {
				return err
			}
			env, files, err := uf.secrets()
			if err != nil {
				return err
			}
			body := map[string]any{"config": cfg, "secretEnv": env, "secretFiles": files, "deleteSecrets": uf.deletes}
			if rename != "" {
				body["name"] = rename
			}
			c, _ := g.client()
			if err := c.Do(cmd.Context(), "PUT", "/api/workspaces/"+url.PathEscape(w.ID), body, &w); err != nil {
				return wsFlagError(err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "updated workspace %s (id %s)\n", w.Name, w.ID)
			return nil
		},
	}
	uf.register(update, true)
	update.Flags().StringVar(&rename, "name", "", "new name")

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List your workspaces", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ws, err := g.workspaces(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), ws)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tREPOS\tDEV\tSECRETS\tUPDATED")
			for _, w := range ws {
				var repos []string
				for _, r := range w.Config.Repos {
					repos = append(repos, r.URL+"#"+r.Branch)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", w.ID, w.Name, strings.Join(repos, " "), len(w.Config.DevCommands),
					len(w.SecretEnv)+len(w.SecretFiles), when(&w.UpdatedAt, ""))
			}
			return tw.Flush()
		},
	}

	get := &cobra.Command{
		Use: "get ID|NAME", Short: "Show a workspace (secrets by name only)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.workspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), w)
		},
	}

	rm := &cobra.Command{
		Use: "rm ID|NAME...", Aliases: []string{"delete"}, Short: "Delete workspaces (refused while they have sandboxes)",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ws, err := g.workspaces(cmd.Context())
			if err != nil {
				return err
			}
			var chosen []workspace.Workspace
			for _, a := range args {
				w, err := pick(a, "workspace", ws, func(w workspace.Workspace) string { return w.ID }, func(w workspace.Workspace) string { return w.Name })
				if err != nil {
					return err
				}
				chosen = append(chosen, w)
			}
			c, _ := g.client()
			for _, w := range chosen {
				if err := c.Do(cmd.Context(), "DELETE", "/api/workspaces/"+url.PathEscape(w.ID), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted workspace %s (%s)\n", w.Name, w.ID)
			}
			return nil
		},
	}
	cmd.AddCommand(create, update, list, get, rm, newPrebuildCmd(g))
	return cmd
}

func (g *globals) workspaces(ctx context.Context) ([]workspace.Workspace, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	var out struct {
		Workspaces []workspace.Workspace `json:"workspaces"`
	}
	err = c.Do(ctx, "GET", "/api/workspaces", nil, &out)
	return out.Workspaces, err
}

// workspace resolves an id or a name among the caller's workspaces.
func (g *globals) workspace(ctx context.Context, arg string) (workspace.Workspace, error) {
	ws, err := g.workspaces(ctx)
	if err != nil {
		return workspace.Workspace{}, err
	}
	return pick(arg, "workspace", ws, func(w workspace.Workspace) string { return w.ID }, func(w workspace.Workspace) string { return w.Name })
}

// prebuildView is the API's prebuild state, as the CLI prints it.
type prebuildView struct {
	Status  string            `json:"status"`
	Ready   bool              `json:"ready"`
	Stale   bool              `json:"stale"`
	Commits map[string]string `json:"commits"`
	BuiltAt *time.Time        `json:"builtAt"`
	Error   string            `json:"error,omitempty"`
	Log     string            `json:"log,omitempty"`
	// Source of the ready prebuild: build, or promote from SourceSandboxID.
	Source          string `json:"source,omitempty"`
	SourceSandboxID string `json:"sourceSandboxId,omitempty"`
}

// sourceText says where the ready prebuild came from, for the status line.
func (p prebuildView) sourceText() string {
	switch {
	case !p.Ready || p.Source == "":
		return ""
	case p.Source == "promote" && p.SourceSandboxID != "":
		return ", saved from sandbox " + p.SourceSandboxID
	case p.Source == "promote":
		return ", saved from a sandbox"
	}
	return ", built"
}

func newPrebuildCmd(g *globals) *cobra.Command {
	var cancel, del, check, showLog bool
	cmd := &cobra.Command{
		Use:   "prebuild ID|NAME",
		Short: "Build a workspace's prebuild, or --cancel, --delete, --check it; --log shows the last build's log",
		Long: "Without a flag, start a build: a sandbox of the workspace clones and runs the init commands (nothing\n" +
			"secret), and its disk becomes the prebuild new sandboxes of the workspace start from.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w, err := g.workspace(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			c, _ := g.client()
			base := "/api/workspaces/" + url.PathEscape(w.ID) + "/prebuild"
			var pb prebuildView
			switch {
			case del:
				if err := c.Do(cmd.Context(), "DELETE", base, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted the prebuild of %s\n", w.Name)
				return nil
			case cancel:
				err = c.Do(cmd.Context(), "POST", base+"/cancel", nil, &pb)
			case check:
				err = c.Do(cmd.Context(), "POST", base+"/check", nil, &pb)
			case showLog:
				err = c.Do(cmd.Context(), "GET", base, nil, &pb)
			default:
				err = c.Do(cmd.Context(), "POST", base, nil, &pb)
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), pb)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "prebuild of %s: %s (ready: %v, stale: %v%s)\n", w.Name, pb.Status, pb.Ready, pb.Stale, pb.sourceText())
			if pb.Error != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "error: %s\n", pb.Error)
			}
			if showLog {
				fmt.Fprint(cmd.OutOrStdout(), pb.Log)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cancel, "cancel", false, "cancel the running build (the ready prebuild stays)")
	f.BoolVar(&del, "delete", false, "delete the prebuild")
	f.BoolVar(&check, "check", false, "compare the tracked branches with the prebuild's commits; rebuild if one moved")
	f.BoolVar(&showLog, "log", false, "show the status and the last build's log")
	cmd.MarkFlagsMutuallyExclusive("cancel", "delete", "check", "log")
	return cmd
}

type gitSourceView struct {
	ID             string `json:"id"`
	Type           string `json:"type"`
	Kind           string `json:"kind"`
	Name           string `json:"name"`
	Host           string `json:"host"`
	Username       string `json:"username"`
	HasToken       bool   `json:"hasToken"`
	InstallationID int64  `json:"installationId,omitempty"`
}

func newGitSourceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "git-source", Aliases: []string{"git-sources"},
		Short: "Git servers and the tokens that clone your private repositories (sealed; never shown again)"}
	var typ, user string
	var installation int64
	add := &cobra.Command{
		Use:   "add NAME [URL]",
		Short: "Add a git source; the token is read from ATELIER_GIT_TOKEN or stdin",
		Long: "Add a git source; the token is read from ATELIER_GIT_TOKEN or stdin. With --installation, a github\n" +
			"source uses the server's GitHub App installation (on your account or an organization you belong to),\n" +
			"whose short-lived tokens the server mints: no token is read. To use your own GitHub account, open\n" +
			"/auth/github/connect on the dashboard instead (Settings > Connect GitHub).",
		Example: "  ATELIER_GIT_TOKEN=... atelier git-source add work https://git.example.com\n" +
			"  atelier git-source add gh --type github < token.txt\n" +
			"  atelier git-source add acme --type github --installation 123456",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok := os.Getenv("ATELIER_GIT_TOKEN")
			if installation != 0 {
				tok = ""
			} else if tok == "" {
				b, err := io.ReadAll(io.LimitReader(stdinOf(cmd), 8<<10))
				if err != nil {
					return err
				}
				tok = strings.TrimSpace(string(b))
			}
			body := map[string]any{"name": args[0], "type": typ, "username": user, "token": tok}
			if installation != 0 {
				body["installationId"] = installation
				delete(body, "token")
			}
			if len(args) == 2 {
				body["url"] = args[1]
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var s gitSourceView
			if err := c.Do(cmd.Context(), "POST", "/api/git-sources", body, &s); err != nil {
				return flagError(err, map[string]string{"url": "URL", "token": "the token (ATELIER_GIT_TOKEN or stdin)", "type": "--type", "username": "--username", "name": "NAME", "installationId": "--installation"})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added git source %s for %s (id %s)\n", s.Name, s.Host, s.ID)
			return nil
		},
	}
	add.Flags().StringVar(&typ, "type", "generic", "generic or github")
	add.Flags().StringVar(&user, "username", "", "username sent with the token (default x-access-token)")
	add.Flags().Int64Var(&installation, "installation", 0, "github: a GitHub App installation id (no token)")
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List your git sources", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := g.gitSources(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tTYPE\tKIND\tHOST\tUSERNAME\tTOKEN")
			for _, s := range list {
				kind := s.Kind
				if s.InstallationID != 0 {
					kind = fmt.Sprintf("app %d", s.InstallationID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", s.ID, s.Name, s.Type, kind, s.Host, s.Username, s.HasToken)
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use: "rm ID|NAME", Short: "Remove a git source", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := g.gitSources(cmd.Context())
			if err != nil {
				return err
			}
			s, err := pick(args[0], "git-source", list, func(s gitSourceView) string { return s.ID }, func(s gitSourceView) string { return s.Name })
			if err != nil {
				return err
			}
			c, _ := g.client()
			if err := c.Do(cmd.Context(), "DELETE", "/api/git-sources/"+url.PathEscape(s.ID), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed git source %s (%s)\n", s.Name, s.ID)
			return nil
		},
	}
	cmd.AddCommand(add, list, rm, newGitSourceReposCmd(g), newGitSourceBranchesCmd(g))
	return cmd
}

// sourceByArg resolves ID|NAME to one of the caller's git sources.
func (g *globals) sourceByArg(ctx context.Context, arg string) (gitSourceView, error) {
	list, err := g.gitSources(ctx)
	if err != nil {
		return gitSourceView{}, err
	}
	return pick(arg, "git-source", list, func(s gitSourceView) string { return s.ID }, func(s gitSourceView) string { return s.Name })
}

func newGitSourceReposCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "repos ID|NAME", Short: "List the repositories a github source reads (through the GitHub API)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.sourceByArg(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			c, _ := g.client()
			var out struct {
				Repos []struct {
					FullName      string `json:"fullName"`
					Private       bool   `json:"private"`
					DefaultBranch string `json:"defaultBranch"`
					CloneURL      string `json:"cloneUrl"`
				} `json:"repos"`
			}
			if err := c.Do(cmd.Context(), "GET", "/api/git-sources/"+url.PathEscape(s.ID)+"/repos", nil, &out); err != nil {
				return flagError(err, map[string]string{"path.id": "ID|NAME"})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out.Repos)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REPOSITORY\tPRIVATE\tDEFAULT BRANCH\tCLONE URL")
			for _, r := range out.Repos {
				fmt.Fprintf(tw, "%s\t%v\t%s\t%s\n", r.FullName, r.Private, r.DefaultBranch, r.CloneURL)
			}
			return tw.Flush()
		},
	}
}

func newGitSourceBranchesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "branches ID|NAME|public REPO",
		Short: "List a repository's branches: owner/name through the GitHub API, or a URL with git ls-remote",
		Example: "  atelier git-source branches github acme/web\n" +
			"  atelier git-source branches work https://git.example.com/acme/web.git\n" +
			"  atelier git-source branches public https://github.com/golang/go",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := "public"
			if args[0] != "public" {
				s, err := g.sourceByArg(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				id = s.ID
			}
			q := url.Values{"repo": {args[1]}}
			if strings.Contains(args[1], "://") {
				q = url.Values{"url": {args[1]}}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var out struct {
				Branches []struct {
					Name   string `json:"name"`
					Commit string `json:"commit"`
				} `json:"branches"`
			}
			if err := c.Do(cmd.Context(), "GET", "/api/git-sources/"+url.PathEscape(id)+"/branches?"+q.Encode(), nil, &out); err != nil {
				return flagError(err, map[string]string{"query.repo": "REPO", "query.url": "REPO", "path.id": "ID|NAME"})
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), out.Branches)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "BRANCH\tCOMMIT")
			for _, b := range out.Branches {
				fmt.Fprintf(tw, "%s\t%s\n", b.Name, b.Commit)
			}
			return tw.Flush()
		},
	}
}

func (g *globals) gitSources(ctx context.Context) ([]gitSourceView, error) {
	c, err := g.client()
	if err != nil {
		return nil, err
	}
	var out struct {
		Sources []gitSourceView `json:"sources"`
	}
	err = c.Do(ctx, "GET", "/api/git-sources", nil, &out)
	return out.Sources, err
}
