// Package browsertest drives Debian's Chromium from Go tests through
// playwright-core (installed by .ci/run under /var/cache/atelier-test), so
// browser-facing attacks and flows are checked in a real browser.
//
// A test passes the body of an async JavaScript function; it receives
// {browser, context, page, args} and its return value comes back as JSON.
package browsertest

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"atelier/internal/testenv"
)

// EnvDir names the directory whose node_modules holds playwright-core.
const EnvDir = "ATELIER_TEST_PLAYWRIGHT_DIR"

// DefaultDir is where .ci/run installs playwright-core.
const DefaultDir = "/var/cache/atelier-test/playwright"

// Chromium is Debian's chromium binary; never a browser a test tool downloads.
var Chromium = "/usr/bin/chromium"

//go:embed runner.js
var runner []byte

// Options shape one browser run.
type Options struct {
	// Script is the body of `async ({browser, context, page, args}) => { ... }`.
	Script string
	// Args is passed to the script as JSON.
	Args any
	// MapHosts makes Chromium resolve every host matching these patterns
	// (e.g. "*.atelier.test") to 127.0.0.1, so tests use real names on loopback.
	MapHosts []string
	// Viewport width and height; 0 means 1280x800.
	Width, Height int
	// Timeout bounds the whole run; 0 means 60 s.
	Timeout time.Duration
}

// Require skips (or, under testenv.EnvStrict, fails) the test when the browser
// stack is missing, and returns the playwright-core directory.
func Require(tb testing.TB) string {
	tb.Helper()
	missing := func(format string, a ...any) {
		tb.Helper()
		testenv.Missing(tb, format, a...)
	}
	if _, err := os.Stat(Chromium); err != nil {
		missing("requires %s (apt-get install chromium)", Chromium)
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing("requires node (apt-get install nodejs)")
	}
	dir := os.Getenv(EnvDir)
	if dir == "" {
		dir = DefaultDir
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err != nil {
		missing("requires playwright-core in %s (npm install --prefix %s playwright-core; or set %s)", dir, dir, EnvDir)
	}
	return dir
}

// Run executes opts.Script in a fresh headless Chromium (new profile, no
// network beyond what the test serves) and decodes its return value into out
// (which may be nil). Browser console errors and the script's own logs are
// written to the test log.
func Run(tb testing.TB, ctx context.Context, opts Options, out any) error {
	tb.Helper()
	dir := Require(tb)
	work := tb.TempDir()
	runnerPath := filepath.Join(work, "runner.js")
	if err := os.WriteFile(runnerPath, runner, 0o644); err != nil {
		return err
	}
	scriptPath := filepath.Join(work, "script.js")
	body := "module.exports = async ({browser, context, page, args}) => {\n" + opts.Script + "\n};\n"
	if err := os.WriteFile(scriptPath, []byte(body), 0o644); err != nil {
		return err
	}
	args, err := json.Marshal(opts.Args)
	if err != nil {
		return fmt.Errorf("encode args: %w", err)
	}
	w, h := opts.Width, opts.Height
	if w == 0 || h == 0 {
		w, h = 1280, 800
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	launch := map[string]any{
		"chromium": Chromium,
		"profile":  filepath.Join(work, "profile"),
		"mapHosts": opts.MapHosts,
		"width":    w,
		"height":   h,
	}
	launchJSON, _ := json.Marshal(launch)
	cmd := exec.CommandContext(ctx, "node", runnerPath, scriptPath)
	cmd.Env = append(os.Environ(),
		"NODE_PATH="+filepath.Join(dir, "node_modules"),
		"ATELIER_BROWSER_ARGS="+string(args),
		"ATELIER_BROWSER_LAUNCH="+string(launchJSON),
	)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		tb.Logf("browser log:\n%s", s)
	}
	if runErr != nil {
		return fmt.Errorf("browser script: %w", runErr)
	}
	// The runner prints the result as the last line.
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := lines[len(lines)-1]
	if out == nil {
		return nil
	}
	if err := json.Unmarshal([]byte(last), out); err != nil {
		return fmt.Errorf("decode browser result %q: %w", last, err)
	}
	return nil
}
