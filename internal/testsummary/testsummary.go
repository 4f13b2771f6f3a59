// Package testsummary condenses `go test -json` into what a person running
// `make test` needs: one line per package, every skipped test with the
// reason it gave, the full output of every failure, and totals. Passing
// tests print nothing, so skip messages are visible without -v's flood.
package testsummary

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// Result counts what the run saw.
type Result struct {
	Packages, PackagesFailed            int
	Passed, Failed, Skipped             int
	BuildFailed                         bool
	SkipReasons                         []string // "pkg TestX: reason"
	failedOutput, pkgOutput, testOutput map[string][]string
}

// OK reports whether nothing failed.
func (r *Result) OK() bool { return r.PackagesFailed == 0 && r.Failed == 0 && !r.BuildFailed }

func key(pkg, test string) string { return pkg + "\x00" + test }

// Summarize reads test2json events from in and writes the summary to out
// as packages finish. Lines that are not JSON (go vet, build errors printed
// by the go command) are passed through.
func Summarize(in io.Reader, out io.Writer) *Result {
	r := &Result{failedOutput: map[string][]string{}, pkgOutput: map[string][]string{}, testOutput: map[string][]string{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintln(out, string(line))
			continue
		}
		r.handle(ev, out)
	}
	return r
}

func (r *Result) handle(ev event, out io.Writer) {
	k := key(ev.Package, ev.Test)
	switch ev.Action {
	case "build-output":
		fmt.Fprint(out, ev.Output)
	case "build-fail":
		r.BuildFailed = true
	case "output":
		if ev.Test == "" {
			r.pkgOutput[ev.Package] = append(r.pkgOutput[ev.Package], ev.Output)
		} else {
			r.testOutput[k] = append(r.testOutput[k], ev.Output)
		}
	case "pass", "fail", "skip":
		if ev.Test == "" {
			r.packageDone(ev, out)
			return
		}
		switch ev.Action {
		case "pass":
			r.Passed++
		case "fail":
			r.Failed++
			r.failedOutput[ev.Package] = append(r.failedOutput[ev.Package], r.testOutput[k]...)
		case "skip":
			r.Skipped++
			reason := skipReason(r.testOutput[k])
			r.SkipReasons = append(r.SkipReasons, fmt.Sprintf("%s %s: %s", short(ev.Package), ev.Test, reason))
			fmt.Fprintf(out, "skip  %s %s: %s\n", short(ev.Package), ev.Test, reason)
		}
		delete(r.testOutput, k)
	}
}

func (r *Result) packageDone(ev event, out io.Writer) {
	pkgOut := r.pkgOutput[ev.Package]
	delete(r.pkgOutput, ev.Package)
	if ev.Action == "skip" || noTests(pkgOut) {
		return // no test files
	}
	r.Packages++
	d := time.Duration(ev.Elapsed * float64(time.Second)).Round(100 * time.Millisecond)
	if ev.Action == "pass" {
		fmt.Fprintf(out, "ok    %-40s %s\n", short(ev.Package), d)
		return
	}
	r.PackagesFailed++
	fmt.Fprintf(out, "FAIL  %-40s %s\n", short(ev.Package), d)
	for _, l := range r.failedOutput[ev.Package] {
		fmt.Fprint(out, "      "+l)
	}
	if len(r.failedOutput[ev.Package]) == 0 {
		// A failure outside any test: a panic, a timeout, TestMain.
		for _, l := range pkgOut {
			fmt.Fprint(out, "      "+l)
		}
	}
	delete(r.failedOutput, ev.Package)
}

func noTests(out []string) bool {
	for _, l := range out {
		if strings.Contains(l, "[no test files]") {
			return true
		}
	}
	return false
}

// skipReason is what the test said: its log lines, without the runner's own.
func skipReason(lines []string) string {
	var parts []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		// "file_test.go:12: needs root" -> "needs root"
		if i := strings.Index(t, ": "); i > 0 && strings.Contains(t[:i], ".go:") {
			t = t[i+2:]
		}
		parts = append(parts, t)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " / ")
}

func short(pkg string) string { return strings.TrimPrefix(pkg, "atelier/") }

// Totals is the closing line.
func (r *Result) Totals() string {
	s := fmt.Sprintf("%d packages: %d ok, %d failed; tests: %d passed, %d failed, %d skipped",
		r.Packages, r.Packages-r.PackagesFailed, r.PackagesFailed, r.Passed, r.Failed, r.Skipped)
	if r.BuildFailed {
		s += "; some packages did not build"
	}
	return s
}

// SortedSkips lists the skips by package and test, for the closing list.
func (r *Result) SortedSkips() []string {
	out := append([]string(nil), r.SkipReasons...)
	sort.Strings(out)
	return out
}
