package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"atelier/internal/config"
	"atelier/internal/registry"
	"atelier/internal/registry/registrytest"
)

// TestRegistryInstallLeavesDataDirAlone: run before the first serve, the
// install used to create {dataDir} 0755 (and the manager's database then
// went into it world-readable). It now works in the registry dir only,
// and, as root, creates the registry's system user.
func TestRegistryInstallLeavesDataDirAlone(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	regDir := filepath.Join(base, "registry")
	// Verdaccio already there: the install itself is a no-op.
	version := config.Default().Advanced.Server.Verdaccio.Version
	pkg := filepath.Join(registry.AppDir(regDir), "node_modules", "verdaccio", "package.json")
	if err := os.MkdirAll(filepath.Dir(pkg), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pkg, []byte(`{"version":"`+version+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ATELIER_SERVER_MODE": "mock", "ATELIER_DATA_DIR": data, "ATELIER_REGISTRY_DIR": regDir}
	name := ""
	if os.Geteuid() == 0 {
		name = registrytest.UserName(t)
		env["ATELIER_REGISTRY_USER"] = name
	}
	out, err := run(t, env, "registry", "install")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "installed in "+registry.AppDir(regDir)) {
		t.Errorf("output %q", out)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("registry install created the data dir: %v", err)
	}
	if name != "" {
		if _, err := user.Lookup(name); err != nil || !strings.Contains(out, "system user "+name) {
			t.Errorf("user %s not created: %v; output %q", name, err, out)
		}
	}
}
