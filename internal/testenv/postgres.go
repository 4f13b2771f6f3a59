package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A throwaway PostgreSQL server, started by the first test of a binary that
// asks for a database and stopped by StopPostgres in its TestMain. It runs
// as an unprivileged user (initdb refuses root) from a private temp dir,
// listens on 127.0.0.1 at a FreePort and on a socket in that dir, and
// requires a password it makes up. Every test gets a fresh database, dropped
// when the test ends.

// PostgresUnavailable says why PostgresDB would skip, "" when the server
// binaries are installed.
func PostgresUnavailable() string {
	if _, err := pgBinDir(); err != nil {
		return err.Error()
	}
	return ""
}

var pg struct {
	once sync.Once
	srv  *pgServer
	err  error
	n    int
	mu   sync.Mutex
}

type pgServer struct {
	dir, bin, data string
	port           int
	password       string
	cred           *syscall.Credential
	proc           *exec.Cmd
	exited         <-chan struct{}
}

// PostgresDB creates an empty database on the binary's server (starting it
// on first use) and returns its URL; the database is dropped after the test.
// It skips (fails under ATELIER_TEST_STRICT) when PostgreSQL is not
// installed; the Debian package is `postgresql`.
func PostgresDB(tb testing.TB) string {
	tb.Helper()
	if why := PostgresUnavailable(); why != "" {
		Missing(tb, "postgres tests need the PostgreSQL server binaries (Debian: apt-get install postgresql): %s", why)
	}
	pg.once.Do(func() { pg.srv, pg.err = startPostgres(FreePort(tb)) })
	if pg.err != nil {
		tb.Fatalf("start postgres: %v", pg.err)
	}
	pg.mu.Lock()
	pg.n++
	name := fmt.Sprintf("t%d_%d", os.Getpid(), pg.n)
	pg.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pg.srv.admin(ctx, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'UTF8'`); err != nil {
		tb.Fatalf("create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.srv.admin(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	return pg.srv.url(name)
}

// StopPostgres stops the server PostgresDB started, if any, and removes its
// files. TestMain calls it after m.Run.
func StopPostgres() {
	if pg.srv == nil {
		return
	}
	if err := pg.srv.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop postgres: %v\n", err)
	}
	pg.srv = nil
}

func (s *pgServer) url(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("atelier", s.password),
		Host: "127.0.0.1:" + strconv.Itoa(s.port), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

func (s *pgServer) admin(ctx context.Context, stmt string) error {
	c, err := pgx.Connect(ctx, s.url("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, stmt)
	return err
}

func pgBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no /usr/lib/postgresql/*/bin/postgres and no pg_ctl on PATH")
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func startPostgres(port int) (*pgServer, error) {
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "atelier-pg-")
	if err != nil {
		return nil, err
	}
	pw := make([]byte, 16)
	_, _ = rand.Read(pw)
	s := &pgServer{dir: dir, bin: bin, data: filepath.Join(dir, "data"), port: port, password: hex.EncodeToString(pw)}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		s.cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		if err := os.Chown(dir, 65534, 65534); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(s.password+"\n"), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if s.cred != nil {
		_ = os.Chown(pwFile, 65534, 65534)
	}
	if out, err := s.run("initdb", "-D", s.data, "-U", "atelier", "--auth=scram-sha-256", "--pwfile="+pwFile,
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	// postgres runs as this process's child rather than daemonized by
	// pg_ctl, with a parent-death signal: a test binary that panics or is
	// killed (a timeout) takes its server with it instead of leaking it.
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", s.data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "LC_ALL=C"}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT is postgres's immediate shutdown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGQUIT}
	// The parent-death signal follows the thread that started the child,
	// not the process: that thread stays locked to this goroutine, alive,
	// until postgres exits.
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	s.proc = cmd
	s.exited = exited
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.admin(ctx, "SELECT 1")
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("postgres exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			_ = s.stop()
			return nil, fmt.Errorf("postgres not ready within 60 s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *pgServer) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + s.bin + ":/usr/bin:/bin", "LC_ALL=C"}
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd.CombinedOutput()
}

func (s *pgServer) stop() error {
	_ = s.proc.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.proc.Process.Kill()
		<-s.exited
	}
	return os.RemoveAll(s.dir)
}
