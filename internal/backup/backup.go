// Package backup makes and restores one archive of what a host cannot
// rebuild: a consistent online copy of the database (SQLite's VACUUM INTO,
// a snapshot of one read transaction, taken while the manager writes), the
// config file, the secrets key, the SSH host key and Caddy's storage
// (ACME account and certificates, so a restored host does not ask the CA
// again). Sandbox disks are not in it (see ARCHITECTURE.md).
//
// The archive holds every secret of the host: it is written 0600 and must
// be kept like the data dir itself. Restore refuses while a manager uses
// the data dir, refuses entries that are not plain files and directories
// under the expected names, and gives back the data dir's modes (0700
// directories, 0600 files).
package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite"

	"atelier/internal/config"
	"atelier/internal/secretbox"
	"atelier/internal/store"
)

// Entry names in the archive.
const (
	ManifestName = "manifest.json"
	ConfigName   = "config/sandbox.config.json"
	dataPrefix   = "data/"
	// HostKeyFile is the SSH proxy's host key in the data dir.
	HostKeyFile = "ssh_host_ed25519_key"
	caddyDir    = "caddy"
)

// Manifest describes an archive.
type Manifest struct {
	Format    int       `json:"format"`
	Created   time.Time `json:"created"`
	Version   string    `json:"version"`
	Hostname  string    `json:"hostname"`
	DataDir   string    `json:"dataDir"`
	Files     []string  `json:"files"`
	NotBackup []string  `json:"notBackedUp"`
}

// NotBackedUp is what an archive leaves out and why.
var NotBackedUp = []string{
	"sandbox disks (LVM thin volumes in sandbox-vg or {stateDir}/overlays/*.ext4): back them up with the sandboxes stopped (lvcreate -s snapshots, or cp --reflink/--sparse of the .ext4 files)",
	"images and prebuilds ({stateDir}/images, image-*/prebuild-* volumes): rebuilt by atelier images",
	"the npm cache ({dataDir}-registry): a cache, refilled from the registry",
	"sandbox logs ({logDir})",
}

// Options of Create.
type Options struct {
	Config     *config.Config
	ConfigFile string
	Version    string
}

// PostgresProcedure is what an operator does instead of atelier backup
// and update when the store is PostgreSQL (advanced.server.database.url):
// the database is not a file of this host, and its replicas share it.
const PostgresProcedure = `the store is PostgreSQL (advanced.server.database.url, ATELIER_DATABASE_URL): its database is not a file of this host, so atelier backup, restore and update do not copy it. ` +
	`Back it up with pg_dump --format=custom (Debian's postgresql-client, version >= the server's) and restore with pg_restore --clean; ` +
	`keep the secrets key file (advanced.server.secretsKeyFile) and auth.jwtSecret with the dump, as the dump's sealed values open only with that key. ` +
	`To update: pg_dump, stop every replica, install the new binary on each, run atelier migrate once, start them; to roll back, restore the dump and the old binaries`

// ErrPostgres is the refusal of backup, restore and update on a PostgreSQL store.
var ErrPostgres = errors.New(PostgresProcedure)

// CheckSupported refuses a config whose store this package cannot copy.
func CheckSupported(cfg *config.Config) error {
	if cfg.Advanced.Server.Database.URL != "" {
		return ErrPostgres
	}
	return nil
}

// Create writes the archive (tar.gz) to w.
func Create(ctx context.Context, o Options, w io.Writer) (Manifest, error) {
	if err := CheckSupported(o.Config); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	data := o.Config.Server.DataDir
	host, _ := os.Hostname()
	m := Manifest{Format: 1, Created: time.Now().UTC(), Version: o.Version, Hostname: host, DataDir: data, NotBackup: NotBackedUp}
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)

	tmp, err := os.MkdirTemp(data, ".backup-")
	if err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	defer os.RemoveAll(tmp)
	db := filepath.Join(data, store.DBFile)
	if _, err := os.Stat(db); err != nil {
		return m, fmt.Errorf("backup: no database at %s: %w", db, err)
	}
	snap := filepath.Join(tmp, store.DBFile)
	if err := CopyDB(ctx, db, snap); err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	var files []struct{ name, src string }
	files = append(files, struct{ name, src string }{dataPrefix + store.DBFile, snap})
	for _, f := range []string{secretbox.KeyFile, HostKeyFile} {
		if _, err := os.Stat(filepath.Join(data, f)); err == nil {
			files = append(files, struct{ name, src string }{dataPrefix + f, filepath.Join(data, f)})
		}
	}
	if o.ConfigFile != "" {
		if _, err := os.Stat(o.ConfigFile); err == nil {
			files = append(files, struct{ name, src string }{ConfigName, o.ConfigFile})
		}
	}
	caddy := filepath.Join(data, caddyDir)
	_ = filepath.WalkDir(caddy, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasSuffix(p, ".lock") {
			return nil
		}
		rel, _ := filepath.Rel(data, p)
		files = append(files, struct{ name, src string }{dataPrefix + filepath.ToSlash(rel), p})
		return nil
	})
	for _, f := range files {
		m.Files = append(m.Files, f.name)
	}
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := writeEntry(tw, ManifestName, mb); err != nil {
		return m, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return m, fmt.Errorf("backup: read %s: %w", f.src, err)
		}
		if err := writeEntry(tw, f.name, b); err != nil {
			return m, err
		}
	}
	if err := tw.Close(); err != nil {
		return m, err
	}
	return m, gz.Close()
}

func writeEntry(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	_, err := tw.Write(b)
	return err
}

// CopyDB writes a consistent copy of the SQLite database src to dst (which
// must not exist) with VACUUM INTO: one read transaction, so writers of a
// running manager go on and the copy is a snapshot of one moment. dst is
// made 0600.
func CopyDB(ctx context.Context, src, dst string) error {
	u := "file:" + filepath.ToSlash(src) + "?mode=ro&_pragma=busy_timeout(10000)"
	db, err := sql.Open("sqlite", u)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer db.Close()
	// Created first, 0600 and empty, so the copy never exists readable by
	// others; VACUUM INTO accepts an existing empty file.
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("copy database: %w", err)
	}
	f.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("copy database %s: %w", src, err)
	}
	return nil
}

// RestoreDB replaces the database dst with src. The manager must be
// stopped: its -wal and -shm are removed so nothing of the old database is
// replayed over the restored one.
func RestoreDB(src, dst string) error {
	in, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".restore"
	if err := os.WriteFile(tmp, in, 0o600); err != nil {
		return err
	}
	for _, s := range []string{"-wal", "-shm"} {
		if err := os.Remove(dst + s); err != nil && !errors.Is(err, fs.ErrNotExist) {
			os.Remove(tmp)
			return err
		}
	}
	return os.Rename(tmp, dst)
}

// InUse says why the data dir is in use by a running manager, or "".
// It asks twice: the manager's unix socket answers, or a process holds
// the database open (found through /proc, which covers a manager started
// with --no-socket).
func InUse(cfg *config.Config) string {
	if c, err := net.DialTimeout("unix", cfg.Server.SocketPath, time.Second); err == nil {
		c.Close()
		return "a manager answers on " + cfg.Server.SocketPath
	}
	db := filepath.Join(cfg.Server.DataDir, store.DBFile)
	if pid := openBy(db); pid > 0 {
		return fmt.Sprintf("process %d has %s open", pid, db)
	}
	return ""
}

func openBy(file string) int {
	want, err := filepath.Abs(file)
	if err != nil {
		return 0
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err == nil && (l == want || l == want+"-wal") {
				return pid
			}
		}
	}
	return 0
}

// RestoreOptions of Restore.
type RestoreOptions struct {
	Config     *config.Config
	ConfigFile string
	// Force replaces an existing database (never one in use).
	Force bool
	// SkipConfig keeps the config file as it is.
	SkipConfig bool
}

// Restore unpacks an archive over the data dir and config file.
func Restore(ctx context.Context, o RestoreOptions, r io.Reader) (Manifest, error) {
	var m Manifest
	cfg := o.Config
	if err := CheckSupported(cfg); err != nil {
		return m, fmt.Errorf("restore refused: %w", err)
	}
	if why := InUse(cfg); why != "" {
		return m, fmt.Errorf("restore refused: %s; stop it first (atelier manager stop): restoring under a running manager would corrupt its data", why)
	}
	data := cfg.Server.DataDir
	if _, err := os.Stat(filepath.Join(data, store.DBFile)); err == nil && !o.Force {
		return m, fmt.Errorf("restore refused: %s already holds a database; pass --force to replace it (it is moved to %s first)", data, filepath.Join(data, "restore-replaced"))
	}
	gz, err := gzip.NewReader(r)
	if err != nil {
		return m, fmt.Errorf("restore: not a backup archive: %w", err)
	}
	tr := tar.NewReader(gz)
	files := map[string][]byte{}
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return m, fmt.Errorf("restore: read archive: %w", err)
		}
		if err := checkName(h); err != nil {
			return m, err
		}
		total += h.Size
		if total > 8<<30 {
			return m, errors.New("restore: archive larger than 8 GiB")
		}
		b, err := io.ReadAll(io.LimitReader(tr, h.Size))
		if err != nil {
			return m, fmt.Errorf("restore: read %s: %w", h.Name, err)
		}
		files[h.Name] = b
	}
	mb, ok := files[ManifestName]
	if !ok || json.Unmarshal(mb, &m) != nil || m.Format != 1 {
		return m, errors.New("restore: the archive has no manifest of format 1")
	}
	if _, ok := files[dataPrefix+store.DBFile]; !ok {
		return m, errors.New("restore: the archive holds no database")
	}
	if err := store.SecureDataDir(data, nil); err != nil {
		return m, err
	}
	// Whatever would be replaced is kept aside, not deleted.
	aside := filepath.Join(data, "restore-replaced", time.Now().UTC().Format("20060102T150405Z"))
	for name := range files {
		rel, ok := strings.CutPrefix(name, dataPrefix)
		if !ok {
			continue
		}
		dst := filepath.Join(data, filepath.FromSlash(rel))
		if _, err := os.Lstat(dst); err == nil {
			keep := filepath.Join(aside, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(keep), 0o700); err != nil {
				return m, err
			}
			if err := os.Rename(dst, keep); err != nil {
				return m, fmt.Errorf("restore: move %s aside: %w", dst, err)
			}
		}
	}
	for _, s := range []string{"-wal", "-shm"} {
		db := filepath.Join(data, store.DBFile) + s
		if _, err := os.Lstat(db); err == nil {
			_ = os.MkdirAll(aside, 0o700)
			if err := os.Rename(db, filepath.Join(aside, store.DBFile+s)); err != nil {
				return m, err
			}
		}
	}
	for name, b := range files {
		rel, ok := strings.CutPrefix(name, dataPrefix)
		if !ok {
			continue
		}
		dst := filepath.Join(data, filepath.FromSlash(rel))
		if err := mkdirPrivate(data, filepath.Dir(dst)); err != nil {
			return m, err
		}
		if err := writeNew(dst, b); err != nil {
			return m, fmt.Errorf("restore %s: %w", rel, err)
		}
	}
	if b, ok := files[ConfigName]; ok && !o.SkipConfig && o.ConfigFile != "" {
		if err := os.MkdirAll(filepath.Dir(o.ConfigFile), 0o755); err != nil {
			return m, err
		}
		if err := writeReplace(o.ConfigFile, b); err != nil {
			return m, fmt.Errorf("restore config: %w", err)
		}
	}
	return m, nil
}

// checkName admits regular files and directories under the names Create
// writes; anything else (a link, a device, ../, an absolute path) is a
// hostile or foreign archive.
func checkName(h *tar.Header) error {
	clean := path.Clean(h.Name)
	ok := clean == ManifestName || clean == ConfigName ||
		(strings.HasPrefix(clean, dataPrefix) && !strings.Contains(clean, "..") && clean != "data/")
	if clean != h.Name || !ok || path.IsAbs(h.Name) {
		return fmt.Errorf("restore: unexpected entry %q in the archive", h.Name)
	}
	if h.Typeflag != tar.TypeReg {
		return fmt.Errorf("restore: entry %q is not a regular file", h.Name)
	}
	return nil
}

func mkdirPrivate(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("restore: %s is outside %s", dir, root)
	}
	p := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("restore: %s is not a directory", p)
		}
	}
	return nil
}

// writeNew creates path 0600; it never follows a symlink placed there.
func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeReplace(path string, b []byte) error {
	tmp := path + ".restore"
	os.Remove(tmp)
	if err := writeNew(tmp, b); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
