// Package systemd is how Atelier runs as a service: the unit files of the
// manager and of the boot-time network and storage setup (templates kept
// as data, rendered with the binary and config paths), their installation
// under a root prefix, and the systemctl and journalctl commands that drive
// them, run as argv through a hostcmd.Runner.
package systemd

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"text/template"

	"atelier/internal/hostcmd"
)

// Unit names. The manager's is the seed's atelier-manager.
const (
	ManagerUnit = "atelier-manager.service"
	NetworkUnit = "atelier-network.service"
	StorageUnit = "atelier-storage.service"
)

// UnitDir is where units are installed (under the root prefix).
const UnitDir = "/etc/systemd/system"

// Binaries of systemd's tools.
const (
	SystemctlBin  = "/usr/bin/systemctl"
	JournalctlBin = "/usr/bin/journalctl"
)

// AllUnits are Atelier's units, the manager first.
var AllUnits = []string{ManagerUnit, NetworkUnit, StorageUnit}

//go:embed units/*.service
var unitFS embed.FS

// Params fill the unit templates.
type Params struct {
	// Binary is the atelier binary the units run, e.g. /usr/local/bin/atelier.
	Binary string
	// ConfigFile is the config the units pass as ATELIER_CONFIG.
	ConfigFile string
}

// Unit is one rendered unit file.
type Unit struct {
	Name    string
	Content []byte
}

// safePath is what may stand unquoted in a unit's ExecStart= and
// Environment=: no space (a word separator), no % (a specifier), no quote
// or backslash, no $ (a variable).
var safePath = regexp.MustCompile(`^/[A-Za-z0-9._+/-]*$`)

// Render returns every unit for p.
func Render(p Params) ([]Unit, error) {
	for _, f := range []struct{ name, v string }{{"binary", p.Binary}, {"config file", p.ConfigFile}} {
		if !safePath.MatchString(f.v) {
			return nil, fmt.Errorf("render units: %s path %q must be absolute and use only letters, digits and . _ + - /", f.name, f.v)
		}
	}
	data := struct {
		Params
		ManagerUnit, NetworkUnit, StorageUnit string
	}{p, ManagerUnit, NetworkUnit, StorageUnit}
	out := make([]Unit, 0, len(AllUnits))
	for _, name := range AllUnits {
		src, err := unitFS.ReadFile("units/" + name)
		if err != nil {
			return nil, fmt.Errorf("render units: %w", err)
		}
		tpl, err := template.New(name).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", name, err)
		}
		var b bytes.Buffer
		if err := tpl.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("render %s: %w", name, err)
		}
		out = append(out, Unit{Name: name, Content: b.Bytes()})
	}
	return out, nil
}

// Path is where unit name lives under root.
func Path(root, name string) string { return filepath.Join(root, UnitDir, name) }

// Install writes units under root/etc/systemd/system (0644, atomically),
// leaving a file whose content is already right untouched. It returns the
// names it wrote.
func Install(root string, units []Unit) ([]string, error) {
	dir := filepath.Join(root, UnitDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install units: %w", err)
	}
	var changed []string
	for _, u := range units {
		p := filepath.Join(dir, u.Name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, u.Content) {
			continue
		}
		if err := writeAtomic(p, u.Content, 0o644); err != nil {
			return changed, fmt.Errorf("install unit %s: %w", u.Name, err)
		}
		changed = append(changed, u.Name)
	}
	return changed, nil
}

// Remove deletes the named units under root; a missing one is not an
// error. It returns the names it removed.
func Remove(root string, names []string) ([]string, error) {
	var removed []string
	for _, n := range names {
		err := os.Remove(Path(root, n))
		switch {
		case err == nil:
			removed = append(removed, n)
		case errors.Is(err, fs.ErrNotExist):
		default:
			return removed, fmt.Errorf("remove unit %s: %w", n, err)
		}
	}
	return removed, nil
}

// Installed reports which of Atelier's units exist under root.
func Installed(root string) []string {
	var have []string
	for _, n := range AllUnits {
		if _, err := os.Stat(Path(root, n)); err == nil {
			have = append(have, n)
		}
	}
	return have
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Systemctl drives units through systemctl and journalctl.
type Systemctl struct {
	R hostcmd.Runner
	// Out receives the commands' output (nil: discarded).
	Out io.Writer
}

func (s Systemctl) run(ctx context.Context, args ...string) error {
	return s.R.Run(ctx, s.Out, append([]string{SystemctlBin}, args...)...)
}

// DaemonReload makes systemd read changed unit files.
func (s Systemctl) DaemonReload(ctx context.Context) error { return s.run(ctx, "daemon-reload") }

// Enable makes units start at boot.
func (s Systemctl) Enable(ctx context.Context, units ...string) error {
	return s.run(ctx, append([]string{"enable", "--quiet"}, units...)...)
}

// Disable stops units from starting at boot (they keep running).
func (s Systemctl) Disable(ctx context.Context, units ...string) error {
	return s.run(ctx, append([]string{"disable", "--quiet"}, units...)...)
}

// Start, Stop and Restart act on one unit and wait for the job.
func (s Systemctl) Start(ctx context.Context, unit string) error { return s.run(ctx, "start", unit) }
func (s Systemctl) Stop(ctx context.Context, unit string) error  { return s.run(ctx, "stop", unit) }
func (s Systemctl) Restart(ctx context.Context, unit string) error {
	return s.run(ctx, "restart", unit)
}

// IsActive returns systemd's word for the unit's state (active, inactive,
// failed, activating, ...). systemctl exits non-zero for every state but
// active; that is an answer, not an error.
func (s Systemctl) IsActive(ctx context.Context, unit string) (string, error) {
	out, err := hostcmd.Output(ctx, s.R, SystemctlBin, "is-active", unit)
	state := firstLine(out)
	if err != nil && (hostcmd.Code(err) < 0 || state == "") {
		return "", err
	}
	return state, nil
}

// IsEnabled returns enabled, disabled, static, ... or not-found.
func (s Systemctl) IsEnabled(ctx context.Context, unit string) (string, error) {
	out, err := hostcmd.Output(ctx, s.R, SystemctlBin, "is-enabled", unit)
	state := firstLine(out)
	if err != nil && (hostcmd.Code(err) < 0 || state == "") {
		return "", err
	}
	return state, nil
}

// JournalArgv is the journalctl command of a unit's log: the last lines
// lines, then new ones as they come when follow is set.
func JournalArgv(unit string, lines int, follow bool) []string {
	argv := []string{JournalctlBin, "--unit", unit, "--no-pager", "--lines", fmt.Sprint(lines)}
	if follow {
		argv = append(argv, "--follow")
	}
	return argv
}

func firstLine(s string) string {
	if i := bytes.IndexByte([]byte(s), '\n'); i >= 0 {
		s = s[:i]
	}
	return string(bytes.TrimSpace([]byte(s)))
}
