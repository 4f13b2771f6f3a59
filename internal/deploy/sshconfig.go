package deploy

import (
	"bufio"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// HostConfig is what ~/.ssh/config says about one host alias.
type HostConfig struct {
	HostName       string
	User           string
	Port           int
	IdentityFiles  []string
	KnownHostsFile string
}

// ParseSSHConfig reads the OpenSSH client config in r and returns what it
// says for alias: Host blocks (patterns with * and ?, negated with !) are
// applied in order and, as OpenSSH does, the first value found for a key
// wins (IdentityFile accumulates). Match blocks are skipped. home expands
// a leading ~; %h, %u, %p and %r in IdentityFile are not expanded beyond
// %h (the host name) and %d (home).
func ParseSSHConfig(r io.Reader, alias, home string) HostConfig {
	var hc HostConfig
	active := true // lines before the first Host apply to every host
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val := splitKV(line)
		switch strings.ToLower(key) {
		case "host":
			active = hostMatches(strings.Fields(val), alias)
			continue
		case "match":
			active = false
			continue
		}
		if !active {
			continue
		}
		val = unquote(val)
		switch strings.ToLower(key) {
		case "hostname":
			if hc.HostName == "" {
				hc.HostName = val
			}
		case "user":
			if hc.User == "" {
				hc.User = val
			}
		case "port":
			if hc.Port == 0 {
				hc.Port, _ = strconv.Atoi(val)
			}
		case "identityfile":
			hc.IdentityFiles = append(hc.IdentityFiles, val)
		case "userknownhostsfile":
			if hc.KnownHostsFile == "" {
				hc.KnownHostsFile = strings.Fields(val)[0]
			}
		}
	}
	name := hc.HostName
	if name == "" {
		name = alias
	}
	for i, f := range hc.IdentityFiles {
		hc.IdentityFiles[i] = expand(strings.NewReplacer("%h", name, "%d", home, "%%", "%").Replace(f), home)
	}
	if hc.KnownHostsFile != "" {
		hc.KnownHostsFile = expand(hc.KnownHostsFile, home)
	}
	return hc
}

// LoadSSHConfig reads ~/.ssh/config (a missing file says nothing).
func LoadSSHConfig(home, alias string) HostConfig {
	f, err := os.Open(filepath.Join(home, ".ssh", "config"))
	if err != nil {
		return HostConfig{}
	}
	defer f.Close()
	return ParseSSHConfig(f, alias, home)
}

func splitKV(line string) (string, string) {
	i := strings.IndexAny(line, " \t=")
	if i < 0 {
		return line, ""
	}
	key, rest := line[:i], strings.TrimLeft(line[i:], " \t")
	rest = strings.TrimLeft(strings.TrimPrefix(rest, "="), " \t")
	return key, rest
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

func hostMatches(patterns []string, alias string) bool {
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if ok, _ := path.Match(p, alias); ok {
			if neg {
				return false
			}
			matched = true
		}
	}
	return matched
}

func expand(p, home string) string {
	if p == "~" {
		return home
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(home, rest)
	}
	return p
}
