package build

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// AptSourcesDir is where the host's apt sources live; the build takes its
// Debian mirror from there and never names a host of its own.
var AptSourcesDir = "/etc/apt"

// MirrorLines returns one-line apt sources ("deb URI SUITE COMPONENTS")
// for suite, suite-updates and suite-security, read from the host's
// sources.list and sources.list.d (both formats). Entries for other suites
// (third-party repositories) are left out: the image gets only Debian.
func MirrorLines(etcApt, suite string) ([]string, error) {
	want := map[string]bool{suite: true, suite + "-updates": true, suite + "-security": true}
	var files []string
	if _, err := os.Stat(filepath.Join(etcApt, "sources.list")); err == nil {
		files = append(files, filepath.Join(etcApt, "sources.list"))
	}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", pat))
		files = append(files, m...)
	}
	seen := map[string]bool{}
	var out []string
	add := func(uri, s string, comps []string) {
		if !want[s] || uri == "" {
			return
		}
		// Only main: the image needs nothing from contrib or non-free.
		hasMain := false
		for _, c := range comps {
			hasMain = hasMain || c == "main"
		}
		if !hasMain {
			return
		}
		l := fmt.Sprintf("deb %s %s main", uri, s)
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read apt sources: %w", err)
		}
		if strings.HasSuffix(f, ".sources") {
			for _, st := range deb822(b) {
				if !containsWord(st["types"], "deb") || strings.EqualFold(st["enabled"], "no") {
					continue
				}
				for _, uri := range strings.Fields(st["uris"]) {
					for _, s := range strings.Fields(st["suites"]) {
						add(uri, s, strings.Fields(st["components"]))
					}
				}
			}
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if i := strings.Index(line, "#"); i >= 0 {
				line = strings.TrimSpace(line[:i])
			}
			f := strings.Fields(line)
			if len(f) < 4 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			if strings.HasPrefix(f[0], "[") { // [arch=... signed-by=...]
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) < 3 {
				continue
			}
			add(f[0], f[1], f[2:])
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return len(strings.Fields(out[i])[2]) < len(strings.Fields(out[j])[2]) })
	hasSuite := false
	for _, l := range out {
		hasSuite = hasSuite || strings.Fields(l)[2] == suite
	}
	if !hasSuite {
		return nil, fmt.Errorf("no Debian %s mirror in the host's apt sources (%s/sources.list*); add one (e.g. a deb line for %s main)", suite, etcApt, suite)
	}
	return out, nil
}

// deb822 parses the stanzas of a .sources file; keys are lowercased.
func deb822(b []byte) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, last = map[string]string{}, ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case (line[0] == ' ' || line[0] == '\t') && last != "":
			cur[last] += " " + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			cur[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
