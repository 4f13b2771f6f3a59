package testsummary

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSummarizeRealRun runs `go test -json` on a small module whose tests
// pass, skip with a reason and fail, and checks the summary shows each
// skip's reason and the failure's output while passing tests stay quiet.
func TestSummarizeRealRun(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module sample\n\ngo 1.22\n",
		"a/a_test.go": `package a
import "testing"
func TestPasses(t *testing.T) { t.Log("quiet when passing") }
func TestSkips(t *testing.T) { t.Skip("needs root: run as root, or in CI") }
func TestFails(t *testing.T) { t.Fatal("boom: the reason it failed") }
`,
		"b/b_test.go": `package b
import "testing"
func TestOK(t *testing.T) {}
`,
		"c/c.go": "package c\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r := Summarize(stdout, &out)
	_ = cmd.Wait()
	s := out.String()
	for _, want := range []string{
		"skip  sample/a TestSkips: needs root: run as root, or in CI",
		"FAIL  sample/a", "boom: the reason it failed",
		"ok    sample/b",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "quiet when passing") || strings.Contains(s, "sample/c") {
		t.Errorf("passing tests or packages without tests printed:\n%s", s)
	}
	if r.OK() || r.Passed != 2 || r.Failed != 1 || r.Skipped != 1 || r.Packages != 2 || r.PackagesFailed != 1 {
		t.Errorf("result %+v", r)
	}
	if got := r.Totals(); !strings.Contains(got, "1 skipped") {
		t.Errorf("totals %q", got)
	}
}
