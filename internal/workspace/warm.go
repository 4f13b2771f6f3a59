package workspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"atelier/internal/agent"
)

// A prebuild's warm-ups do once, in the build, what would otherwise be the
// first minutes of every sandbox of the workspace: fill npm's cache and
// node_modules, and run OpenCode's first start. They are optimisations: a
// failure is a warning in the prebuild's log (the step's detail starts
// "warning:") and the prebuild is saved anyway, since a sandbox from it
// works, only slower, as one from the image does. Only cancelling the build
// ends one with an error.

// warmTimeout bounds the OpenCode warm-up of one directory.
const warmTimeout = 3 * time.Minute

func (p *Provisioner) logger() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

// noProgram reports an exec refused because the program is not in the
// guest (the agent answers 4xx on argv).
func noProgram(err error) bool {
	var ae *agent.Error
	return errors.As(err, &ae) && ae.Field == "argv"
}

// warmResult joins per-directory results into the step's detail; any
// warning makes the whole detail a warning.
func warmResult(parts []string, warned bool) string {
	s := strings.Join(parts, "; ")
	if warned {
		return "warning: " + s
	}
	return s
}

// npmPlan says how a repository's dependencies are installed: npm ci with
// npm's own lockfile, npm install without writing one when there is only
// package.json (so the tree stays clean for the background pull), and
// nothing for another package manager's lockfile or no package.json.
func npmPlan(names map[string]bool) (argv []string, why string) {
	base := []string{"--prefer-offline", "--no-audit", "--no-fund"}
	switch {
	case !names["package.json"]:
		return nil, "no package.json"
	case names["package-lock.json"] || names["npm-shrinkwrap.json"]:
		return append([]string{"npm", "ci"}, base...), ""
	case names["yarn.lock"]:
		return nil, "yarn.lock: not an npm lockfile"
	case names["pnpm-lock.yaml"]:
		return nil, "pnpm-lock.yaml: not an npm lockfile"
	case names["bun.lock"] || names["bun.lockb"]:
		return nil, "bun lockfile: not an npm lockfile"
	}
	return append(append([]string{"npm", "install"}, base...), "--no-package-lock"), ""
}

// warmNpm installs each repository's npm dependencies in the build, through
// the npm cache when it serves, so the prebuild holds ~/.npm and the
// node_modules trees.
func (p *Provisioner) warmNpm(ctx context.Context, c *agent.Client, g *guest, sandboxID string, repos []Repo) (string, error) {
	env := map[string]string{"npm_config_update_notifier": "false"}
	via := "npm's configured registry"
	if p.NpmRegistry != nil {
		if u := p.NpmRegistry(); u != "" {
			env["npm_config_registry"], via = u, "the npm cache"
		}
	}
	var parts []string
	warned := false
	for _, r := range repos {
		dir := path.Join(g.workdir, r.Path)
		list, err := c.List(ctx, dir)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			parts, warned = append(parts, r.Path+": "+truncate(err.Error(), 160)), true
			continue
		}
		names := map[string]bool{}
		for _, e := range list.Entries {
			names[e.Name] = true
		}
		argv, why := npmPlan(names)
		if argv == nil {
			parts = append(parts, r.Path+": skipped, "+why)
			continue
		}
		begin := time.Now()
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: argv, Env: env, Cwd: dir, User: p.User,
			TimeoutMs: initTimeout.Milliseconds(), MaxOutputBytes: 64 << 10})
		what := strings.Join(argv[:2], " ")
		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case noProgram(err):
			return "skipped: no npm in the image", nil
		case err != nil:
			err = fmt.Errorf("%s: %w", what, err)
		case res.ExitCode != 0:
			err = fmt.Errorf("%s: exit %d: %s", what, res.ExitCode, npmError(res.Stderr))
		}
		if err != nil {
			p.logger().Warn("prebuild npm warm-up failed", "sandbox_id", sandboxID, "repo", r.Path, "err", err)
			parts, warned = append(parts, r.Path+": "+truncate(err.Error(), 200)), true
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %s via %s in %s", r.Path, what, via, time.Since(begin).Round(100*time.Millisecond)))
	}
	return warmResult(parts, warned), nil
}

// warmOpenCode runs OpenCode once in each repository as the image user,
// when the image has it (its manifest declares a service of role opencode).
// `opencode models` does what its first start in a directory does, without
// a model or credentials: it creates its data directories and database
// (~/.local/share/opencode), loads the config and installs its plugins and
// provider packages (~/.cache/opencode, ~/.config/opencode), caches the
// models catalogue, and registers the directory's project. The command
// exits on its own; the image's OpenCode service keeps running until the
// build sandbox is stopped.
func (p *Provisioner) warmOpenCode(ctx context.Context, c *agent.Client, g *guest, sandboxID string, repos []Repo) (string, error) {
	svcs, err := c.Services(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "warning: list services: " + truncate(err.Error(), 200), nil
	}
	bin := ""
	for _, s := range svcs {
		if s.Role != "opencode" {
			continue
		}
		// A running service reports its argv; a stopped one does not, and
		// its binary is looked up on the PATH.
		bin = "opencode"
		if len(s.Argv) > 0 && path.IsAbs(s.Argv[0]) {
			bin = s.Argv[0]
		}
	}
	if bin == "" {
		return "skipped: the image has no OpenCode service", nil
	}
	dirs := []string{g.workdir}
	if len(repos) > 0 {
		dirs = dirs[:0]
		for _, r := range repos {
			dirs = append(dirs, path.Join(g.workdir, r.Path))
		}
	}
	var parts []string
	warned := false
	for _, dir := range dirs {
		begin := time.Now()
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{bin, "models"}, Cwd: dir, User: p.User,
			Env: map[string]string{"NO_COLOR": "1"}, TimeoutMs: warmTimeout.Milliseconds(), MaxOutputBytes: 64 << 10})
		rel := strings.TrimPrefix(strings.TrimPrefix(dir, g.workdir), "/")
		if rel == "" {
			rel = "."
		}
		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case noProgram(err):
			return "skipped: " + bin + " is not in the image", nil
		case err != nil:
			err = fmt.Errorf("opencode models: %w", err)
		case res.ExitCode != 0:
			err = fmt.Errorf("opencode models: exit %d: %s", res.ExitCode, lastLine(res.Stderr))
		}
		if err != nil {
			// What failed once (no network for its catalogue, a broken
			// config) fails again: the build does not wait for it per
			// repository.
			p.logger().Warn("prebuild OpenCode warm-up failed", "sandbox_id", sandboxID, "dir", dir, "err", err)
			parts, warned = append(parts, rel+": "+truncate(err.Error(), 200)), true
			if n := len(dirs) - len(parts); n > 0 {
				parts = append(parts, fmt.Sprintf("%d more not tried", n))
			}
			break
		}
		parts = append(parts, fmt.Sprintf("%s: opencode models in %s", rel, time.Since(begin).Round(100*time.Millisecond)))
	}
	return warmResult(parts, warned), nil
}

// npmError picks the line that says what went wrong from npm's stderr:
// its last line only points at its debug log.
func npmError(stderr string) string {
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if (strings.HasPrefix(l, "npm error") || strings.HasPrefix(l, "npm ERR!")) && !strings.Contains(l, "complete log") {
			return truncate(l, 160)
		}
	}
	return lastLine(stderr)
}
