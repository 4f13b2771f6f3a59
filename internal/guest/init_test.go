package guest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// The init test runs in child processes: becoming a subreaper and reaping
// with wait4(-1) inside the test binary itself would steal the exit codes
// of every other test's commands, which is precisely the bug under test.
const (
	roleEnv    = "ATELIER_GUEST_TEST_ROLE"
	dirEnv     = "ATELIER_GUEST_TEST_DIR"
	initExecs  = 300
	resultLine = "INIT-RESULT "
)

type initResult struct {
	ServeExits []int `json:"serveExits"`
	Orphans    int64 `json:"orphans"`
}

// TestInitReapsOrphansWithoutStealingExitCodes runs init's supervision
// as a subreaper over a serve child that execs many short commands, half
// of which leave an orphan behind. Init must reap every orphan while the
// serve child gets every exit code exactly; init must also restart a
// serve child that failed.
func TestInitReapsOrphansWithoutStealingExitCodes(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), roleEnv+"=init", dirEnv+"="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("init helper: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var res initResult
	found := false
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), resultLine); ok {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("no result from init helper\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	// First serve run fails on purpose (3) and is restarted; the second
	// runs the workload and exits 0 only if every exit code was exact.
	if len(res.ServeExits) != 2 || res.ServeExits[0] != 3 || res.ServeExits[1] != 0 {
		t.Fatalf("serve exits %v, want [3 0]\nstderr:\n%s", res.ServeExits, stderr.String())
	}
	if want := int64(initExecs / 2); res.Orphans != want {
		t.Fatalf("init reaped %d orphans, want %d", res.Orphans, want)
	}
}

// TestInitHelperProcess is the body of the helper processes.
func TestInitHelperProcess(t *testing.T) {
	switch os.Getenv(roleEnv) {
	case "init":
		os.Exit(initRole())
	case "serve":
		os.Exit(serveRole())
	default:
		t.Skip("helper process only")
	}
}

func initRole() int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "subreaper:", err)
		return 1
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, roleEnv+"=") {
			env = append(env, kv)
		}
	}
	var exits []int
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	orphans, err := supervise(ctx, initConfig{
		serveArgv: []string{os.Args[0], "-test.run=^TestInitHelperProcess$", "-test.count=1"},
		serveEnv:  append(env, roleEnv+"=serve"),
		log:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
		onServeExit: func(code int) bool {
			exits = append(exits, code)
			return code != 0 && len(exits) < 5
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
		return 1
	}
	b, _ := json.Marshal(initResult{ServeExits: exits, Orphans: orphans})
	fmt.Println(resultLine + string(b))
	return 0
}

func serveRole() int {
	dir := os.Getenv(dirEnv)
	marker := filepath.Join(dir, "first-run-done")
	if _, err := os.Stat(marker); errors.Is(err, os.ErrNotExist) {
		// A crash on the first run: init must restart us.
		_ = os.WriteFile(marker, nil, 0o644)
		return 3
	}
	root := filepath.Join(dir, "root")
	_ = os.MkdirAll(root, 0o755)
	srv := NewServer(Options{FileRoots: []string{root}, WorkDir: root, LogDir: filepath.Join(dir, "logs"), ConfigPath: filepath.Join(dir, "config.json")})
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.ServeUnix(ctx, sock) }()
	c := agent.New(agent.UnixDialer(sock))
	defer c.Close()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx, 0); err != nil {
		fmt.Fprintln(os.Stderr, "serve helper:", err)
		return 1
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	sem := make(chan struct{}, 32)
	for i := range initExecs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			want := i % 256
			script := fmt.Sprintf("exit %d", want)
			if i%2 == 1 {
				// The subshell outlives sh and is re-parented to init.
				script = fmt.Sprintf("(sleep 0.02; exit 9) >/dev/null 2>&1 & exit %d", want)
			}
			res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", script}})
			if err != nil || res.ExitCode != want {
				mu.Lock()
				bad++
				mu.Unlock()
				fmt.Fprintf(os.Stderr, "exec %d: want %d, got %+v, %v\n", i, want, res, err)
			}
		}()
	}
	wg.Wait()
	// Let the last orphans finish so init has reaped them all.
	time.Sleep(300 * time.Millisecond)
	if bad > 0 {
		return 1
	}
	return 0
}
