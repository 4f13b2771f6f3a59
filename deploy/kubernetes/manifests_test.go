package kubedeploy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"atelier/internal/config"
	k8srt "atelier/internal/runtime/kubernetes"
)

type kustomization struct {
	Namespace          string   `json:"namespace"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name string   `json:"name"`
		Envs []string `json:"envs"`
	} `json:"configMapGenerator"`
	SecretGenerator []struct {
		Name  string   `json:"name"`
		Envs  []string `json:"envs"`
		Files []string `json:"files"`
	} `json:"secretGenerator"`
}

// render writes the deployment as init does and decodes every resource
// with client-go's scheme: each must be a known Kind of the API.
func render(t *testing.T) (string, kustomization, map[string][]any) {
	t.Helper()
	dir := t.TempDir()
	_, err := Write(dir, [][2]string{{"ATELIER_K8S_NAMESPACE", "atelier"}, {"ATELIER_AUTH_ALLOWED_ORG", "acme"}},
		[][2]string{{"ATELIER_JWT_SECRET", strings.Repeat("s", 40)}, {"ATELIER_GITHUB_CLIENT_SECRET", "0123456789abcdef"}})
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	kinds := map[string][]any{}
	dec := scheme.Codecs.UniversalDeserializer()
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			t.Fatalf("resource %s: %v", r, err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			obj, gvk, err := dec.Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			kinds[gvk.Kind] = append(kinds[gvk.Kind], obj)
		}
	}
	return dir, k, kinds
}

func TestManifestsParse(t *testing.T) {
	dir, k, kinds := render(t)
	want := map[string]int{"Namespace": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1, "PersistentVolumeClaim": 1, "Deployment": 1, "Service": 2}
	for kind, n := range want {
		if len(kinds[kind]) != n {
			t.Errorf("%s: %d, want %d", kind, len(kinds[kind]), n)
		}
	}
	for kind := range kinds {
		if _, ok := want[kind]; !ok {
			t.Errorf("unexpected kind %s", kind)
		}
	}
	if k.Namespace != "atelier" {
		t.Errorf("namespace %q", k.Namespace)
	}
	// Every generator's input exists; every variable is one the manager reads.
	known := map[string]bool{}
	for _, v := range config.EnvVars() {
		known[v.Name] = true
	}
	var env []string
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Envs {
			env = append(env, readEnv(t, dir, f, known)...)
		}
	}
	for _, g := range k.SecretGenerator {
		for _, f := range g.Envs {
			env = append(env, readEnv(t, dir, f, known)...)
		}
		for _, f := range g.Files {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("secret %s: %v", g.Name, err)
			}
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "agent-ca", "ca.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v %v", fi.Mode(), err)
	}
	fi, err = os.Stat(filepath.Join(dir, "secrets.env"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secrets.env: %v %v", fi.Mode(), err)
	}

	dep := kinds["Deployment"][0].(*appsv1.Deployment)
	pod := dep.Spec.Template
	c := pod.Spec.Containers[0]
	// The manager, as deployed, loads a valid production config.
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	cfg, err := config.Load(config.Options{SkipFile: true, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the deployed config does not validate: %v", err)
	}
	if cfg.Sandbox.Runtime != "kubernetes" || cfg.Sandbox.Kubernetes.Kubeconfig != "" {
		t.Errorf("runtime %q kubeconfig %q: want kubernetes in-cluster", cfg.Sandbox.Runtime, cfg.Sandbox.Kubernetes.Kubeconfig)
	}
	// Sandbox NetworkPolicies admit the manager's Pods by this label.
	if pod.Labels[k8srt.LabelRole] != k8srt.RoleManager {
		t.Errorf("manager pod labels %v lack %s=%s", pod.Labels, k8srt.LabelRole, k8srt.RoleManager)
	}
	var caMount string
	for _, m := range c.VolumeMounts {
		if m.Name == "agent-ca" {
			caMount = m.MountPath
			if !m.ReadOnly {
				t.Error("agent CA mounted writable")
			}
		}
	}
	if caMount == "" || caMount != cfg.Sandbox.Kubernetes.CADir {
		t.Errorf("CA mounted at %q, config reads %q", caMount, cfg.Sandbox.Kubernetes.CADir)
	}
	sc := c.SecurityContext
	if *sc.AllowPrivilegeEscalation || !*pod.Spec.SecurityContext.RunAsNonRoot || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("manager security context %+v", sc)
	}
	for _, s := range kinds["Service"] {
		svc := s.(*corev1.Service)
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			t.Errorf("service %s selects no manager pod", svc.Name)
		}
	}
	sa := kinds["ServiceAccount"][0].(*corev1.ServiceAccount)
	rb := kinds["RoleBinding"][0].(*rbacv1.RoleBinding)
	role := kinds["Role"][0].(*rbacv1.Role)
	if pod.Spec.ServiceAccountName != sa.Name || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name ||
		len(rb.Subjects) != 1 || rb.Subjects[0].Name != sa.Name || rb.Subjects[0].Namespace != "" {
		t.Errorf("binding %+v of %s to %s", rb, role.Name, sa.Name)
	}
}

func readEnv(t *testing.T, dir, name string, known map[string]bool) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := ParseEnv(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var out []string
	for _, p := range kv {
		if !known[p[0]] {
			t.Errorf("%s: %s is no variable the manager reads", name, p[0])
		}
		out = append(out, p[0]+"="+p[1])
	}
	return out
}

// TestRBACLeastPrivilege: namespaced only, no wildcard, no verb that
// grants more than it names, and exactly what the runtime uses.
func TestRBACLeastPrivilege(t *testing.T) {
	_, _, kinds := render(t)
	if len(kinds["ClusterRole"])+len(kinds["ClusterRoleBinding"]) > 0 {
		t.Fatal("cluster-wide RBAC")
	}
	allowed := []string{"get", "list", "watch", "create", "update", "patch", "delete"}
	grants := map[string][]string{}
	for _, r := range kinds["Role"][0].(*rbacv1.Role).Rules {
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("non-resource rule %+v", r)
		}
		for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs} {
			if slices.Contains(list, "*") {
				t.Errorf("wildcard in %+v", r)
			}
		}
		for _, v := range r.Verbs {
			if !slices.Contains(allowed, v) {
				t.Errorf("verb %q (escalate, bind, impersonate, deletecollection are never needed)", v)
			}
		}
		for _, res := range r.Resources {
			if strings.Contains(res, "/") {
				t.Errorf("subresource %q (pods/exec: agents are reached over mutual TLS)", res)
			}
			for _, g := range r.APIGroups {
				grants[g+"/"+res] = append(grants[g+"/"+res], r.Verbs...)
			}
		}
	}
	uses := map[string][]string{
		"/pods":                             {"get", "list", "create", "delete"},
		"/persistentvolumeclaims":           {"get", "list", "create", "patch", "delete"},
		"/secrets":                          {"get", "list", "create", "update", "delete"},
		"networking.k8s.io/networkpolicies": {"get", "list", "create", "update", "delete"},
		"snapshot.storage.k8s.io/volumesnapshots": {"get", "list", "create", "delete"},
		"coordination.k8s.io/leases":              {"get", "create", "update"},
	}
	for res, verbs := range uses {
		g := slices.Clone(grants[res])
		slices.Sort(g)
		w := slices.Clone(verbs)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Errorf("%s: granted %v, used %v", res, g, w)
		}
	}
	if len(grants) != len(uses) {
		t.Errorf("granted %v, used %v", grants, uses)
	}
}

func TestWriteKeepsSecrets(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(dir, nil, [][2]string{{"ATELIER_JWT_SECRET", "first"}}); err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(filepath.Join(dir, "agent-ca", "ca.key"))
	wrote, err := Write(dir, [][2]string{{"ATELIER_BASE_DOMAIN", "example.org"}}, [][2]string{{"ATELIER_JWT_SECRET", "second"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wrote {
		if strings.HasSuffix(w, "secrets.env") || strings.Contains(w, "agent-ca") {
			t.Errorf("a rerun rewrote %s", w)
		}
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, "agent-ca", "ca.key"))
	sec, _ := os.ReadFile(filepath.Join(dir, "secrets.env"))
	env, _ := os.ReadFile(filepath.Join(dir, "atelier.env"))
	if !bytes.Equal(ca1, ca2) || !strings.Contains(string(sec), "first") || !strings.Contains(string(env), "ATELIER_BASE_DOMAIN=example.org") {
		t.Fatalf("rerun: ca kept %v, secrets %q, env %q", bytes.Equal(ca1, ca2), sec, env)
	}
	os.Remove(filepath.Join(dir, "agent-ca", "ca.crt"))
	if _, err := Write(dir, nil, nil); err == nil {
		t.Fatal("half a CA accepted")
	}
}
