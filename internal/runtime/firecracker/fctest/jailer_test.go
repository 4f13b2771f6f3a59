package fctest

import (
	"slices"
	"strings"
	"testing"
)

// The fake jailer accepts what Firecracker's jailer documents
// (docs/jailer.md) and refuses the rest, so a driver that drifts from the
// documented arguments fails its tests.
func TestParseJailerArgs(t *testing.T) {
	base := []string{"--id", "a1", "--exec-file", "/fc", "--uid", "1", "--gid", "2"}
	a, err := parseJailerArgs(append(append([]string{}, base...), "--cgroup", "cpu.max=1 2", "--cgroup", "memory.max=3",
		"--resource-limit", "no-file=10", "--", "--api-sock", "/run/s", "--id", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if a.single["chroot-base-dir"] != "/srv/jailer" || a.single["cgroup-version"] != "1" {
		t.Errorf("defaults: %v", a.single)
	}
	if !slices.Equal(a.multi["cgroup"], []string{"cpu.max=1 2", "memory.max=3"}) || !slices.Equal(a.extra, []string{"--api-sock", "/run/s", "--id", "x"}) {
		t.Errorf("parsed %+v", a)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "a1", "--exec-file", "/fc", "--uid", "1"}, "'gid' required"},
		{append(append([]string{}, base...), "--chroot", "/x"), "wasn't expected"},
		{append(append([]string{}, base...), "--id", "b2"), "more than once"},
		{append(append([]string{}, base...), "--netns"), "requires a value"},
		{append(append([]string{}, base...), "--netns", "--daemonize"), "requires a value"},
		{append([]string{"stray"}, base...), "wasn't expected"},
	} {
		if _, err := parseJailerArgs(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestPathComponentsSafe(t *testing.T) {
	for p, want := range map[string]bool{
		"firecracker": true, "a/b": true, "atelier-firecracker": true,
		"": false, "/abs": false, "a/../b": false, "./a": false, "..": false,
	} {
		if got := pathComponentsSafe(p); got != want {
			t.Errorf("%q: %v", p, got)
		}
	}
}
