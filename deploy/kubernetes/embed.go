// Package kubedeploy holds the Kustomize manifests that deploy Atelier on a
// cluster, and writes them out for `atelier init --kubernetes`.
package kubedeploy

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"atelier/internal/agentpki"
)

//go:embed *.yaml atelier.env
var files embed.FS

// Resources are the manifest files kustomization.yaml lists.
func Resources() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		out[p] = b
		return err
	})
	return out, err
}

// ParseEnv reads KEY=VALUE lines; blank lines and # comments are skipped.
func ParseEnv(b []byte) ([][2]string, error) {
	var out [][2]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		out = append(out, [2]string{k, v})
	}
	return out, sc.Err()
}

func renderEnv(kv [][2]string) []byte {
	var b bytes.Buffer
	for _, p := range kv {
		fmt.Fprintf(&b, "%s=%s\n", p[0], p[1])
	}
	return b.Bytes()
}

// Write lays the deployment out in dir: the manifests, atelier.env (the
// template's variables with env's values over them, env's others
// appended), and, unless they exist, secrets.env (0600) and the agent CA
// (agent-ca/, key 0600): rerunning keeps the secrets a running install
// uses. It returns the files it wrote.
func Write(dir string, env, secrets [][2]string) ([]string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "agent-ca"), 0o700); err != nil {
		return nil, err
	}
	res, err := Resources()
	if err != nil {
		return nil, err
	}
	var wrote []string
	put := func(name string, b []byte, mode os.FileMode, keep bool) error {
		p := filepath.Join(dir, name)
		if keep {
			if _, err := os.Stat(p); err == nil {
				return nil
			}
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			return err
		}
		wrote = append(wrote, p)
		return os.Chmod(p, mode)
	}
	names := make([]string, 0, len(res))
	for n := range res {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if n == "atelier.env" {
			continue
		}
		if err := put(n, res[n], 0o644, false); err != nil {
			return wrote, err
		}
	}
	base, err := ParseEnv(res["atelier.env"])
	if err != nil {
		return wrote, fmt.Errorf("atelier.env template: %w", err)
	}
	for _, e := range env {
		if i := slices.IndexFunc(base, func(p [2]string) bool { return p[0] == e[0] }); i >= 0 {
			base[i][1] = e[1]
		} else {
			base = append(base, e)
		}
	}
	if err := put("atelier.env", renderEnv(base), 0o644, false); err != nil {
		return wrote, err
	}
	if err := put("secrets.env", renderEnv(secrets), 0o600, true); err != nil {
		return wrote, err
	}
	_, cerr := os.Stat(filepath.Join(dir, "agent-ca", "ca.crt"))
	_, kerr := os.Stat(filepath.Join(dir, "agent-ca", "ca.key"))
	switch {
	case cerr == nil && kerr == nil:
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
		c, k, err := agentpki.NewCAPEM()
		if err != nil {
			return wrote, err
		}
		if err := put("agent-ca/ca.key", k, 0o600, false); err != nil {
			return wrote, err
		}
		if err := put("agent-ca/ca.crt", c, 0o644, false); err != nil {
			return wrote, err
		}
	default:
		return wrote, fmt.Errorf("%s: one of ca.crt and ca.key is missing; restore it or remove both", filepath.Join(dir, "agent-ca"))
	}
	return wrote, nil
}
