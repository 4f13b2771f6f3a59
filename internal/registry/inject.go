package registry

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"

	"atelier/internal/agent"
)

// Marker starts every file the injection writes. Only files that carry it
// are ever rewritten or removed: a guest's own .npmrc (with a token for a
// private registry, say) is left alone.
const Marker = "# Written by Atelier: the shared npm cache. Removed when the cache is disabled."

// Home is a guest user's home directory and who owns the files put there.
type Home struct {
	Dir   string
	Owner string // user (or user:group) as the guest knows it
}

// Targets are where the client configs go in every guest.
type Targets struct {
	// SystemNpmrc is npm's global config (pnpm reads it too); "" skips it.
	SystemNpmrc string
	// Homes receive .npmrc (npm, pnpm), .bunfig.toml (bun's global config)
	// and .yarnrc.yml (yarn berry). A home missing in the image is skipped.
	Homes []Home
}

// DefaultTargets are the paths of Atelier's images: /etc/npmrc for every
// user, plus the homes of root and of the sandbox user dev.
func DefaultTargets() Targets {
	return Targets{
		SystemNpmrc: "/etc/npmrc",
		Homes:       []Home{{Dir: "/root", Owner: "root"}, {Dir: "/home/dev", Owner: "dev"}},
	}
}

// file is one config file to place.
type file struct {
	path, owner, content string
}

// clientFiles are the configs pointing every package manager at url.
func clientFiles(t Targets, url, host string) []file {
	npmrc := Marker + "\nregistry=" + url + "\n"
	var out []file
	if t.SystemNpmrc != "" {
		out = append(out, file{t.SystemNpmrc, "", npmrc})
	}
	for _, h := range t.Homes {
		out = append(out,
			file{path.Join(h.Dir, ".npmrc"), h.Owner, npmrc},
			file{path.Join(h.Dir, ".bunfig.toml"), h.Owner, Marker + "\n[install]\nregistry = \"" + url + "\"\n"},
			// yarn refuses plain-http registries unless their host is whitelisted.
			file{path.Join(h.Dir, ".yarnrc.yml"), h.Owner, Marker + "\nnpmRegistryServer: \"" + url + "\"\nunsafeHttpWhitelist:\n  - \"" + host + "\"\n"},
		)
	}
	return out
}

// applyFiles makes a guest match the desired state: with enabled, every
// target file exists with its content; without, none of the files Atelier
// wrote remains. Files without the marker are never touched. It costs one
// listing per directory, a read per existing target, and one batch.
func applyFiles(ctx context.Context, c *agent.Client, files []file, enabled bool) error {
	existing, err := existingFiles(ctx, c, files)
	if err != nil {
		return err
	}
	var writes []agent.FileWrite
	var deletes []string
	for _, f := range files {
		cur, present := existing[f.path]
		if !present {
			if enabled && existing[path.Dir(f.path)+"/"] == "dir" {
				writes = append(writes, agent.FileWrite{Path: f.path, Content: f.content, Mode: "0644", Owner: f.owner})
			}
			continue
		}
		if !strings.HasPrefix(cur, Marker) {
			continue // the guest's own file
		}
		switch {
		case enabled && cur != f.content:
			writes = append(writes, agent.FileWrite{Path: f.path, Content: f.content, Mode: "0644", Owner: f.owner})
		case !enabled:
			deletes = append(deletes, f.path)
		}
	}
	var res *agent.BatchResult
	switch {
	case len(writes) > 0:
		res, err = c.WriteFiles(ctx, writes)
	case len(deletes) > 0:
		res, err = c.DeleteFiles(ctx, deletes, false)
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("update npm client configs: %w", err)
	}
	var errs []error
	for _, r := range res.Results {
		if !r.OK && r.Error != nil {
			errs = append(errs, fmt.Errorf("%s: %s", r.Path, r.Error.Detail))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("update npm client configs: %w", errors.Join(errs...))
	}
	return nil
}

// existingFiles maps each target that exists to its content (first 64 KiB),
// and each target directory that exists to "dir" (key "<dir>/").
func existingFiles(ctx context.Context, c *agent.Client, files []file) (map[string]string, error) {
	out := map[string]string{}
	byDir := map[string][]string{}
	var dirs []string
	for _, f := range files {
		d := path.Dir(f.path)
		if _, ok := byDir[d]; !ok {
			dirs = append(dirs, d)
		}
		byDir[d] = append(byDir[d], f.path)
	}
	for _, d := range dirs {
		var present []string
		l, err := c.List(ctx, d)
		switch {
		case agent.IsNotFound(err):
			continue
		case err != nil:
			return nil, fmt.Errorf("list %s: %w", d, err)
		case l.Truncated:
			present = byDir[d] // too many entries to tell: read each
		default:
			names := map[string]bool{}
			for _, e := range l.Entries {
				names[e.Name] = true
			}
			for _, p := range byDir[d] {
				if names[path.Base(p)] {
					present = append(present, p)
				}
			}
		}
		out[d+"/"] = "dir"
		for _, p := range present {
			fc, err := c.ReadFile(ctx, p, agent.EncodingUTF8, 0, 64<<10)
			switch {
			case agent.IsNotFound(err):
			case err != nil:
				// Unreadable (a directory, not UTF-8, ...): not ours.
				out[p] = ""
			default:
				out[p] = fc.Content
			}
		}
	}
	return out, nil
}
