package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"atelier/internal/config"
)

// nodeFetchOverride pins node-fetch: Verdaccio 6.8.0 asks for a tag
// ("cjs") that the npm registry no longer resolves, and its install fails
// with ETARGET without this override.
const nodeFetchOverride = "2.7.0"

// PackageJSON is the manifest Install writes into the install directory:
// Verdaccio pinned to one exact version.
func PackageJSON(version string) []byte {
	b, _ := json.MarshalIndent(map[string]any{
		"name":         "atelier-registry",
		"private":      true,
		"description":  "Verdaccio, installed and run by Atelier as the sandboxes' shared npm cache.",
		"dependencies": map[string]string{"verdaccio": version},
		"overrides":    map[string]string{"node-fetch": nodeFetchOverride},
	}, "", "  ")
	return append(b, '\n')
}

// Installed reports whether dir holds Verdaccio at exactly version.
func Installed(dir, version string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "verdaccio", "package.json"))
	if err != nil {
		return false
	}
	var m struct{ Version string }
	return json.Unmarshal(b, &m) == nil && m.Version == version
}

// binPath is Verdaccio's entry script inside an install directory.
func binPath(dir string) string {
	return filepath.Join(dir, "node_modules", "verdaccio", "bin", "verdaccio")
}

// Install puts Verdaccio version into dir with `npm install --omit=dev`
// from the host's configured npm registry. It does nothing when that
// version is already there, so callers (atelier init, CI) may run it every
// time.
func Install(ctx context.Context, dir, version string) error {
	if version == "" || strings.ContainsAny(version, " /\\") {
		return fmt.Errorf("install verdaccio: bad version %q", version)
	}
	if Installed(dir, version) {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("install verdaccio: npm not found (install Node.js 20+ and npm): %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install verdaccio: create %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "package.json"), PackageJSON(version), 0o644); err != nil {
		return fmt.Errorf("install verdaccio: write package.json: %w", err)
	}
	// A lock file from another version would pin the old tree.
	if err := os.Remove(filepath.Join(dir, "package-lock.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("install verdaccio: remove stale lock file: %w", err)
	}
	cmd := exec.CommandContext(ctx, npm, "install", "--omit=dev", "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=error")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("install verdaccio %s in %s: npm install: %w\n%s", version, dir, err, tail(out.String(), 4000))
	}
	if !Installed(dir, version) {
		return fmt.Errorf("install verdaccio %s in %s: npm install succeeded but node_modules/verdaccio is not that version", version, dir)
	}
	// Verdaccio runs as its own user: under a tight umask npm left the code
	// readable by root only.
	if err := readableByAll(dir); err != nil {
		return fmt.Errorf("install verdaccio %s in %s: %w", version, dir, err)
	}
	return nil
}

// readableByAll is chmod -R a+rX on dir (nothing in it is secret: it is
// Verdaccio's published code). Symlinks are left alone.
func readableByAll(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m := fi.Mode().Perm() | 0o444
		if d.IsDir() || m&0o100 != 0 {
			m |= 0o111
		}
		if m == fi.Mode().Perm() {
			return nil
		}
		return os.Chmod(p, m)
	})
}

// HostRegistry is the npm registry configured on the host (`npm config get
// registry`): the cache's one uplink. Nothing in Atelier names a registry
// host itself.
func HostRegistry(ctx context.Context) (string, error) {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return "", fmt.Errorf("find the host's npm registry: npm not found: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, npm, "config", "get", "registry").Output()
	if err != nil {
		return "", fmt.Errorf("find the host's npm registry: npm config get registry: %w", err)
	}
	return normalizeUplink(strings.TrimSpace(string(out)))
}

// hostCAFile is the CA bundle the host's npm is configured with (`npm
// config get cafile`), "" when none.
func hostCAFile(ctx context.Context) string {
	npm, err := exec.LookPath("npm")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, npm, "config", "get", "cafile").Output()
	if err != nil {
		return ""
	}
	v := strings.TrimSpace(string(out))
	if v == "null" || v == "undefined" || !filepath.IsAbs(v) {
		return ""
	}
	return v
}

// normalizeUplink checks an uplink URL and gives it a trailing slash, the
// form Verdaccio and the health check both expect.
func normalizeUplink(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("uplink %q: want an http(s) URL", s)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String(), nil
}

// verdaccioConfig is the generated config.yaml. It is JSON, which YAML
// reads as it is, so no value ever needs YAML quoting.
//   - one uplink, the host's npm registry;
//   - anyone on the bridge may read and proxy, nobody may publish or
//     unpublish ("atelier-nobody" is a group no user can be in);
//   - htpasswd with max_users -1: registration is refused (weak point 12);
//   - web UI off; JSON logs at level http, which the supervisor parses for
//     tarball downloads (see touchTarball).
func verdaccioConfig(stateDir, uplink string) ([]byte, error) {
	pkg := map[string]any{"access": "$all", "publish": "atelier-nobody", "unpublish": "atelier-nobody", "proxy": "upstream"}
	cfg := map[string]any{
		"storage": filepath.Join(stateDir, "storage"),
		"plugins": filepath.Join(stateDir, "plugins"),
		"auth": map[string]any{
			"htpasswd": map[string]any{"file": filepath.Join(stateDir, "htpasswd"), "max_users": -1},
		},
		"web": map[string]any{"enable": false},
		"uplinks": map[string]any{
			"upstream": map[string]any{
				"url": uplink, "timeout": "30s", "maxage": "10m", "max_fails": 2, "fail_timeout": "1m", "cache": true,
			},
		},
		"packages":      map[string]any{"@*/*": pkg, "**": pkg},
		"server":        map[string]any{"keepAliveTimeout": 60},
		"max_body_size": "10mb",
		"log":           map[string]any{"type": "stdout", "format": "json", "level": "http"},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode verdaccio config: %w", err)
	}
	return append([]byte("# Generated by Atelier at every start; edits are overwritten.\n"), append(b, '\n')...), nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// OptionsFromConfig are the production supervisor's options: Verdaccio
// installed in {advanced.server.verdaccio.dir}/app, its state in that dir
// (outside the manager's private data dir), run as
// advanced.server.verdaccio.user, listening on the bridge address at
// advanced.server.verdaccio.port.
func OptionsFromConfig(cfg *config.Config) (Options, error) {
	ip, err := netip.ParseAddr(cfg.Network.BridgeIP)
	if err != nil {
		return Options{}, fmt.Errorf("registry options: bridge ip %q: %w", cfg.Network.BridgeIP, err)
	}
	v := cfg.Advanced.Server.Verdaccio
	if v.Port < 1 || v.Port > 65535 {
		return Options{}, fmt.Errorf("registry options: advanced.server.verdaccio.port %d: want 1..65535", v.Port)
	}
	return Options{
		AppDir:         AppDir(v.Dir),
		Version:        v.Version,
		StateDir:       v.Dir,
		User:           v.User,
		FormerStateDir: LegacyDir(cfg.Server.DataDir),
		Listen:         netip.AddrPortFrom(ip, uint16(v.Port)),
	}, nil
}

// AppDir is where Verdaccio is installed under the registry dir
// (advanced.server.verdaccio.dir).
func AppDir(registryDir string) string { return filepath.Join(registryDir, "app") }

// LegacyDir is where Atelier kept the registry before it ran Verdaccio as
// its own user: inside the data dir, which that user must not enter.
func LegacyDir(dataDir string) string { return filepath.Join(dataDir, "registry") }

// MigrateLegacyDir moves {dataDir}/registry (install, config, cached
// packages) to the registry dir when the latter does not exist yet. It is
// a rename, so both must be on one filesystem; otherwise the old dir is
// left, with a warning: the cache starts empty and Verdaccio must be
// installed again (`atelier registry install`).
func MigrateLegacyDir(cfg *config.Config, log *slog.Logger) error {
	from, to := LegacyDir(cfg.Server.DataDir), cfg.Advanced.Server.Verdaccio.Dir
	if _, err := os.Lstat(from); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(to); err == nil {
		log.Warn("an npm cache from an older Atelier is left in the data dir and no longer used; remove it", "path", from, "registry_dir", to)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("move the npm cache out of the data dir: %w", err)
	}
	err := os.Rename(from, to)
	if errors.Is(err, syscall.EXDEV) {
		log.Warn("the npm cache could not be moved out of the data dir (another filesystem); it starts empty: run `atelier registry install`, then remove the old dir",
			"path", from, "registry_dir", to)
		return nil
	}
	if err != nil {
		return fmt.Errorf("move the npm cache out of the data dir: %w", err)
	}
	log.Info("moved the npm cache out of the data dir", "from", from, "to", to)
	return nil
}
