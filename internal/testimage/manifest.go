package testimage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"

	"atelier/internal/agent"
	"atelier/internal/image/manifest"
)

// InstallManifest writes m into the ext4 image at image as its manifest
// (manifest.Path, root's, 0644), with debugfs: no mount, and Build stays
// as it is for the images that have none.
func InstallManifest(ctx context.Context, image string, m *manifest.Manifest) error {
	b, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("install image manifest: %w", err)
	}
	tmp, err := os.CreateTemp("", "atelier-manifest-")
	if err != nil {
		return fmt.Errorf("install image manifest: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("install image manifest: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install image manifest: %w", err)
	}
	dir := path.Dir(manifest.Path)
	var script bytes.Buffer
	// mkdir fails harmlessly when the directory exists; rm when the file
	// does not: both are reported on stderr, which is checked below only
	// for the commands that must succeed.
	fmt.Fprintf(&script, "mkdir %s\n", dir)
	fmt.Fprintf(&script, "rm %s\n", manifest.Path)
	fmt.Fprintf(&script, "write %s %s\n", tmp.Name(), manifest.Path)
	for _, p := range []string{dir, manifest.Path} {
		fmt.Fprintf(&script, "set_inode_field %s uid 0\nset_inode_field %s gid 0\n", p, p)
	}
	fmt.Fprintf(&script, "set_inode_field %s mode 0100644\n", manifest.Path)
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", image)
	cmd.Stdin = &script
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("install image manifest with debugfs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	// debugfs exits 0 whatever its commands did: read the file back.
	got, err := exec.CommandContext(ctx, "debugfs", "-R", "cat "+manifest.Path, image).Output()
	if err != nil || !bytes.Equal(got, b) {
		return fmt.Errorf("install image manifest: %s not written: %s", manifest.Path, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ServicesManifest declares busybox stand-ins for the dev-base image's
// services, run as dev in /home/dev: "vscode" and "opencode" start at boot
// (an httpd each, answering its name at /), "browser" on demand and, as
// the real one, several programs in one group (an httpd and a sleep) that
// exits when either does. Each serves on the port the host gives its role.
func ServicesManifest() *manifest.Manifest {
	www := func(name string) string {
		dir := "/tmp/www/" + name
		return "mkdir -p " + dir + " && echo " + name + " > " + dir + "/index.html && "
	}
	return &manifest.Manifest{
		Schema: manifest.Schema, ID: "atelier-test", User: "dev", Workdir: "/home/dev",
		Services: []manifest.Service{
			{Name: "vscode", Role: manifest.RoleVSCode, Autostart: true, Health: &manifest.Health{Path: "/"},
				Process: agent.ProcessSpec{Shell: www("vscode") + "exec httpd -f -p ${PORT} -h /tmp/www/vscode", Port: 8080, Restart: agent.RestartAlways}},
			{Name: "opencode", Role: manifest.RoleOpenCode, Autostart: true, Health: &manifest.Health{},
				Process: agent.ProcessSpec{Shell: www("opencode") + "exec httpd -f -p ${PORT} -h /tmp/www/opencode", Port: 3000, Restart: agent.RestartOnFailure}},
			{Name: "browser", Role: manifest.RoleBrowser, Health: &manifest.Health{Path: "/"},
				Process: agent.ProcessSpec{Shell: www("browser") + "httpd -f -p ${PORT} -h /tmp/www/browser & sleep 86400 & wait -n; exit 1", Port: 6080, Restart: agent.RestartOnFailure}},
		},
	}
}
