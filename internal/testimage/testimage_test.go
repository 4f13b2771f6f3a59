package testimage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (e2fsprogs): %v", tool, err)
		}
	}
	if _, err := findBusybox(); err != nil {
		t.Skipf("needs busybox-static: %v", err)
	}
}

// debugfs runs one read-only debugfs request against image.
func debugfs(t *testing.T, image, request string) string {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", request, image)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs %q: %v", request, err)
	}
	return out.String()
}

// inode returns the mode (octal string), uid and gid of path in image.
func inode(t *testing.T, image, path string) (mode string, uid, gid int) {
	t.Helper()
	out := debugfs(t, image, "stat "+path)
	if !strings.Contains(out, "Inode:") {
		t.Fatalf("%s not in image:\n%s", path, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "Mode:":
				mode = f[i+1]
			case "User:":
				uid, _ = strconv.Atoi(f[i+1])
			case "Group:":
				gid, _ = strconv.Atoi(f[i+1])
			}
		}
	}
	return mode, uid, gid
}

func TestBuild(t *testing.T) {
	requireTools(t)
	busybox, _ := findBusybox()
	out := filepath.Join(t.TempDir(), "images", "test.ext4")
	// Busybox stands in for the agent: any static binary will do here.
	if err := Build(context.Background(), out, busybox, 32); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 32<<20 {
		t.Errorf("image size %d, want %d", fi.Size(), 32<<20)
	}
	if stats := debugfs(t, out, "stats"); !strings.Contains(stats, "Filesystem volume name:   "+Label) {
		t.Errorf("label %q missing from stats:\n%.400s", Label, stats)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Errorf("output dir holds %d entries, want only the image (staging and temp files removed)", len(ents))
	}

	tests := []struct {
		path     string
		mode     string
		uid, gid int
	}{
		{"/", "0755", 0, 0},
		{AgentPath, "0755", 0, 0},
		{"/bin/busybox", "0755", 0, 0},
		{SuPath, "04755", 0, 0},
		{"/home/dev", "0755", DevUID, DevUID},
		{"/root", "0700", 0, 0},
		{"/tmp", "01777", 0, 0},
		{"/etc/passwd", "0644", 0, 0},
		{"/etc/shadow", "0600", 0, 0},
		{"/etc/resolv.conf", "0644", 0, 0},
		{"/etc/hostname", "0644", 0, 0},
	}
	for _, tc := range tests {
		mode, uid, gid := inode(t, out, tc.path)
		if mode != tc.mode || uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: mode %s uid %d gid %d, want %s %d %d", tc.path, mode, uid, gid, tc.mode, tc.uid, tc.gid)
		}
	}
	for _, a := range Applets {
		if got := debugfs(t, out, "stat /bin/"+a); !strings.Contains(got, `Fast link dest: "busybox"`) {
			t.Errorf("/bin/%s is not a symlink to busybox:\n%.300s", a, got)
		}
	}
	passwd := debugfs(t, out, "cat /etc/passwd")
	for _, want := range []string{"root:x:0:0:root:/root:/bin/sh", "dev:x:1000:1000:dev:/home/dev:/bin/sh"} {
		if !strings.Contains(passwd, want) {
			t.Errorf("/etc/passwd lacks %q:\n%s", want, passwd)
		}
	}
	agent, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfs(t, out, "cat "+AgentPath); got != string(agent) {
		t.Errorf("%s differs from the agent binary (%d bytes, want %d)", AgentPath, len(got), len(agent))
	}
}

func TestBuildReplacesOutput(t *testing.T) {
	requireTools(t)
	busybox, _ := findBusybox()
	out := filepath.Join(t.TempDir(), "test.ext4")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Build(context.Background(), out, busybox, 0); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != DefaultSizeMB<<20 {
		t.Errorf("size %d, want the default %d MB", fi.Size(), DefaultSizeMB)
	}
}

func TestBuildRejects(t *testing.T) {
	requireTools(t)
	busybox, _ := findBusybox()
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dynamic, err := exec.LookPath("mkfs.ext4") // e2fsprogs is linked against libc
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, out, agent string
		size             int
		want             string
	}{
		{"dynamic agent", filepath.Join(dir, "a.ext4"), dynamic, 16, "dynamically linked"},
		{"not an ELF file", filepath.Join(dir, "b.ext4"), notELF, 16, "as ELF"},
		{"missing agent", filepath.Join(dir, "c.ext4"), filepath.Join(dir, "nope"), 16, "no such file"},
		{"too small", filepath.Join(dir, "d.ext4"), busybox, 4, "too small"},
		{"no output path", "", busybox, 16, "empty output path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Build(context.Background(), tc.out, tc.agent, tc.size)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build: %v, want an error containing %q", err, tc.want)
			}
			if tc.out != "" {
				if _, err := os.Stat(tc.out); !os.IsNotExist(err) {
					t.Errorf("failed build left %s", tc.out)
				}
			}
		})
	}
}
