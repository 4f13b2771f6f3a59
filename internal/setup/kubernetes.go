package setup

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	kubedeploy "atelier/deploy/kubernetes"
	"atelier/internal/config"
)

// Kubernetes writes the Kustomize deployment of Atelier on a cluster into
// dir (`atelier init --kubernetes DIR`): the manifests, atelier.env from the
// answers (sandbox.runtime kubernetes, in-cluster), and, on the first run
// only, secrets.env (a random auth.jwtSecret, the GitHub client secret) and
// the agent CA. Nothing on this machine is installed or started.
func Kubernetes(dir string, a Answers, out io.Writer) error {
	env := [][2]string{{"ATELIER_SERVER_MODE", "production"}, {"ATELIER_SANDBOX_RUNTIME", "kubernetes"}}
	add := func(name, v string) {
		if v != "" {
			env = append(env, [2]string{name, v})
		}
	}
	add("ATELIER_BASE_DOMAIN", a.BaseDomain)
	add("ATELIER_TLS_EMAIL", a.TLSEmail)
	add("ATELIER_GITHUB_CLIENT_ID", a.GitHubClientID)
	add("ATELIER_AUTH_ALLOWED_ORG", a.AllowedOrg)
	add("ATELIER_AUTH_ALLOWED_USERS", strings.Join(a.AllowedUsers, ","))
	add("ATELIER_AUTH_ADMINS", strings.Join(a.Admins, ","))
	byKey := map[string]config.EnvVar{}
	for _, v := range config.EnvVars() {
		if _, ok := byKey[v.Key]; !ok {
			byKey[v.Key] = v
		}
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	secrets := [][2]string{{"ATELIER_JWT_SECRET", hex.EncodeToString(secret)}}
	if a.GitHubClientSecret != "" {
		secrets = append(secrets, [2]string{"ATELIER_GITHUB_CLIENT_SECRET", a.GitHubClientSecret})
	}
	for _, kv := range a.Set {
		k, v, ok := strings.Cut(kv, "=")
		ev, known := byKey[k]
		if !ok || !known {
			return fmt.Errorf("--set %q: want KEY=VALUE with a config key that has an environment variable (see atelier config schema)", kv)
		}
		if strings.ContainsAny(v, "\n\r") {
			return fmt.Errorf("--set %s: a value is one line", k)
		}
		if ev.Secret {
			secrets = append(secrets, [2]string{ev.Name, v})
		} else {
			add(ev.Name, v)
		}
	}
	wrote, err := kubedeploy.Write(dir, env, secrets)
	for _, w := range wrote {
		fmt.Fprintf(out, "wrote %s\n", w)
	}
	if err != nil {
		return fmt.Errorf("write the kubernetes deployment to %s: %w", dir, err)
	}
	fmt.Fprintf(out, `
Next:
  1. Check %[1]s/atelier.env: ATELIER_K8S_IMAGES names the OCI image of every Atelier image
     (IMAGE=REFERENCE), and the kustomization's images: entry the manager's own image.
  2. kubectl apply -k %[1]s
secrets.env and agent-ca/ are kept on later runs: they hold the session key and the CA every
running sandbox's agent trusts. Keep them out of version control.
`, dir)
	return nil
}
