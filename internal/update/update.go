// Package update replaces the installed atelier binary with a new one and
// keeps the host working whatever the new binary does: it checks the new
// binary runs, stops the manager (sandboxes keep running: a manager stop
// never stops them), keeps the old binary and a copy of the database,
// installs the new binary, runs its migrations, starts it and waits for a
// healthy manager of the new version. If any of that fails it puts the old
// binary and the old database back and starts the old manager again.
package update

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"atelier/internal/backup"
	"atelier/internal/hostcmd"
	"atelier/internal/store"
	"atelier/internal/systemd"
)

// Restarter stops and starts the manager. The systemd one drives the
// manager's unit; tests start and stop a process.
type Restarter interface {
	Stop(ctx context.Context) error
	Start(ctx context.Context) error
}

// Systemd restarts the manager through its unit.
type Systemd struct{ S systemd.Systemctl }

func (s Systemd) Stop(ctx context.Context) error  { return s.S.Stop(ctx, systemd.ManagerUnit) }
func (s Systemd) Start(ctx context.Context) error { return s.S.Start(ctx, systemd.ManagerUnit) }

// Options configure one update.
type Options struct {
	// Binary is the installed binary the manager runs.
	Binary string
	// NewBinary is the replacement (update --binary); or Version and
	// ReleaseURL name a release to download (update --version).
	NewBinary  string
	Version    string
	ReleaseURL string
	HTTP       *http.Client
	// ConfigFile is passed to the new binary's migrate.
	ConfigFile string
	// DataDir holds the database and, under update/, the copy taken
	// before migrating.
	DataDir string
	Restart Restarter
	// Health returns the running manager's version once it is healthy,
	// and an error while it is not.
	Health func(ctx context.Context) (string, error)
	// Timeout bounds the wait for a healthy manager (default 60 s).
	Timeout time.Duration
	// Runner runs the new binary's version and migrate.
	Runner hostcmd.Runner
	Out    io.Writer
	// SharedStore is set when the store is PostgreSQL: Run refuses, as it
	// can neither copy that database nor update the other replicas.
	SharedStore bool
	// RebuildImages are image ids to rebuild with the new binary after a
	// successful update (update --rebuild-images).
	RebuildImages []string
}

// Result is what an update did.
type Result struct {
	From, To string
	// Backup is the database copy taken before migrating.
	Backup string
	// RolledBack is set when the new binary failed and the old one runs.
	RolledBack bool
}

// PrevSuffix names the previous binary kept beside the installed one.
const PrevSuffix = ".prev"

// Run performs the update.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	say := func(format string, a ...any) { fmt.Fprintf(o.Out, format+"\n", a...) }
	var res Result
	if o.SharedStore {
		return res, fmt.Errorf("atelier update (nothing changed): %w", backup.ErrPostgres)
	}

	staged := o.Binary + ".new"
	defer os.Remove(staged)
	if err := stage(ctx, o, staged); err != nil {
		return res, err
	}
	to, err := binaryVersion(ctx, o.Runner, staged)
	if err != nil {
		return res, fmt.Errorf("the new binary does not run (nothing changed): %w", err)
	}
	res.To = to
	if same, _ := sameContent(staged, o.Binary); same {
		say("%s is already version %s; nothing to do", o.Binary, to)
		res.From = to
		return res, nil
	}
	from, err := binaryVersion(ctx, o.Runner, o.Binary)
	if err != nil {
		from = "unknown"
	}
	res.From = from
	say("updating %s from %s to %s", o.Binary, from, to)

	// Everything from here is undone on failure.
	say("stopping the manager (sandboxes keep running)")
	if err := o.Restart.Stop(ctx); err != nil {
		return res, fmt.Errorf("stop the manager: %w", err)
	}
	restartOld := func(cause error) (Result, error) {
		if err := o.Restart.Start(context.WithoutCancel(ctx)); err != nil {
			return res, fmt.Errorf("%w; starting the manager again also failed: %v", cause, err)
		}
		return res, cause
	}
	dbBackup, err := backupDB(ctx, o.DataDir, from)
	if err != nil {
		return restartOld(fmt.Errorf("back up the database (nothing changed): %w", err))
	}
	res.Backup = dbBackup
	if dbBackup != "" {
		say("database copied to %s", dbBackup)
	}
	prev := o.Binary + PrevSuffix
	if err := copyFile(o.Binary, prev, 0o755); err != nil {
		return restartOld(fmt.Errorf("keep the old binary (nothing changed): %w", err))
	}
	if err := os.Rename(staged, o.Binary); err != nil {
		return restartOld(fmt.Errorf("install the new binary (nothing changed): %w", err))
	}
	fail := func(cause error) (Result, error) {
		say("%v; rolling back to %s", cause, from)
		rerr := rollback(context.WithoutCancel(ctx), o, prev, dbBackup)
		res.RolledBack = rerr == nil
		if rerr != nil {
			return res, fmt.Errorf("update to %s failed: %w; ROLLBACK FAILED: %v (old binary at %s, database copy at %s)", to, cause, rerr, prev, dbBackup)
		}
		say("rolled back: %s runs version %s again", o.Binary, from)
		return res, fmt.Errorf("update to %s failed and was rolled back to %s: %w", to, from, cause)
	}
	say("running database migrations")
	if err := o.Runner.Run(ctx, o.Out, o.Binary, "migrate", "--config", o.ConfigFile); err != nil {
		return fail(fmt.Errorf("migrations failed: %w", err))
	}
	say("starting the manager")
	if err := o.Restart.Start(ctx); err != nil {
		return fail(fmt.Errorf("start the new manager: %w", err))
	}
	if err := waitHealthy(ctx, o.Health, to, o.Timeout); err != nil {
		_ = o.Restart.Stop(context.WithoutCancel(ctx))
		return fail(err)
	}
	say("manager %s is healthy", to)
	for _, img := range o.RebuildImages {
		say("rebuilding image %s", img)
		if err := o.Runner.Run(ctx, o.Out, o.Binary, "images", "build", img, "--config", o.ConfigFile); err != nil {
			return res, fmt.Errorf("updated to %s, but rebuilding image %s failed: %w", to, img, err)
		}
	}
	return res, nil
}

// rollback puts the previous binary and database back and starts the old
// manager, which must become healthy at its version.
func rollback(ctx context.Context, o Options, prev, dbBackup string) error {
	if err := os.Rename(prev, o.Binary); err != nil {
		return fmt.Errorf("restore the old binary: %w", err)
	}
	if dbBackup != "" {
		if err := backup.RestoreDB(dbBackup, filepath.Join(o.DataDir, store.DBFile)); err != nil {
			return fmt.Errorf("restore the database: %w", err)
		}
	}
	if err := o.Restart.Start(ctx); err != nil {
		return fmt.Errorf("start the old manager: %w", err)
	}
	from, _ := binaryVersion(ctx, o.Runner, o.Binary)
	return waitHealthy(ctx, o.Health, from, o.Timeout)
}

func waitHealthy(ctx context.Context, health func(context.Context) (string, error), want string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		v, err := health(ctx)
		switch {
		case err == nil && (want == "" || v == want):
			return nil
		case err == nil:
			last = fmt.Errorf("the manager answering is version %s, not %s", v, want)
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no healthy manager within %v: %w", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// binaryVersion asks a binary for its version (atelier version --short).
func binaryVersion(ctx context.Context, r hostcmd.Runner, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := hostcmd.Output(ctx, r, bin, "version", "--short")
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(out)
	if v == "" || strings.ContainsAny(v, " \n") {
		return "", fmt.Errorf("%s version --short printed %q", bin, out)
	}
	return v, nil
}

// stage puts the new binary at staged, beside the installed one so that
// the final rename is atomic: copied from --binary, or downloaded and
// checked against the release's SHA-256.
func stage(ctx context.Context, o Options, staged string) error {
	switch {
	case o.NewBinary != "" && o.Version != "":
		return errors.New("give --binary or --version, not both")
	case o.NewBinary != "":
		if err := copyFile(o.NewBinary, staged, 0o755); err != nil {
			return fmt.Errorf("copy %s: %w", o.NewBinary, err)
		}
		return nil
	case o.Version != "":
		return Download(ctx, o.HTTP, o.ReleaseURL, o.Version, staged)
	}
	return errors.New("give --binary PATH or --version V")
}

// ReleaseAsset is the file name of a release binary for this machine.
func ReleaseAsset() string { return "atelier-linux-" + runtime.GOARCH }

// Download fetches {base}/v{version}/atelier-linux-{arch} and its .sha256
// (the hex digest, optionally followed by the file name), and writes the
// binary to dst only when its SHA-256 matches.
func Download(ctx context.Context, hc *http.Client, base, version, dst string) error {
	if base == "" {
		return errors.New("--version needs advanced.server.releaseUrl (ATELIER_RELEASE_URL): where releases are downloaded from")
	}
	if strings.ContainsAny(version, "/?#% ") || version == "" {
		return fmt.Errorf("version %q is not a version", version)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Minute}
	}
	url := strings.TrimRight(base, "/") + "/v" + strings.TrimPrefix(version, "v") + "/" + ReleaseAsset()
	sumText, err := get(ctx, hc, url+".sha256", 4096)
	if err != nil {
		return err
	}
	want := strings.ToLower(strings.Fields(string(sumText) + " x")[0])
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%s.sha256 does not hold a SHA-256 digest", url)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download %s: %s", url, resp.Status)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o700)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, 1<<30))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return fmt.Errorf("download %s: %w", url, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		os.Remove(dst)
		return fmt.Errorf("download %s: SHA-256 %s does not match the release's %s; not installed", url, got, want)
	}
	return os.Chmod(dst, 0o755)
}

func get(ctx context.Context, hc *http.Client, url string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("download %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, max))
}

// backupDB copies the database (the manager is stopped, so the copy is
// exact) to {dataDir}/update/atelier-<from>-<time>.db; "" when there is no
// database yet.
func backupDB(ctx context.Context, dataDir, from string) (string, error) {
	db := filepath.Join(dataDir, store.DBFile)
	if _, err := os.Stat(db); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	dir := filepath.Join(dataDir, "update")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, fmt.Sprintf("atelier-%s-%s.db", safeName(from), time.Now().UTC().Format("20060102T150405Z")))
	if err := backup.CopyDB(ctx, db, dst); err != nil {
		return "", err
	}
	return dst, nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

func sameContent(a, b string) (bool, error) {
	ha, err := fileSum(a)
	if err != nil {
		return false, err
	}
	hb, err := fileSum(b)
	return err == nil && ha == hb, err
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies src to dst through a temp file and a rename.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := io.Copy(f, in); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
