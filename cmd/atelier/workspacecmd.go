package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

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
	cmd.AddCommand(create, update, list, get, rm)
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
