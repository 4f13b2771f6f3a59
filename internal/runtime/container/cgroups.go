package container

import (
	"os"
	"path"
	"path/filepath"
	"strings"
)

// cgroupRoot is where the host mounts its cgroup hierarchies.
const cgroupRoot = "/sys/fs/cgroup"

// detectCgroups finds the controllers runc can use under root. On a pure
// cgroup v2 host they are listed in cgroup.controllers; on a v1 or hybrid
// host (v1 controllers plus a controller-less unified tree, where runc
// uses v1) each controller is its own hierarchy. A limit whose controller
// is missing is left out of the spec instead of failing every boot.
//
// Measured on our build machines (hybrid: v1 cpu, memory, pids ... plus
// cgroup2 at /sys/fs/cgroup/unified, where crun refuses to start): runc
// applies the CPU quota, the memory limit and the pids limit through v1.
func detectCgroups(root string) cgroupSupport {
	if b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil {
		var cs cgroupSupport
		for _, c := range strings.Fields(string(b)) {
			switch c {
			case "cpu":
				cs.CPU = true
			case "memory":
				cs.Memory = true
			case "pids":
				cs.Pids = true
			}
		}
		return cs
	}
	exists := func(p string) bool { _, err := os.Stat(filepath.Join(root, p)); return err == nil }
	return cgroupSupport{
		CPU:    exists("cpu/cpu.cfs_quota_us"),
		Memory: exists("memory/memory.limit_in_bytes"),
		// The root of a v1 pids hierarchy has no pids.max of its own.
		Pids: exists("pids/cgroup.procs"),
	}
}

// cgroupsPath is the container's cgroup: name under parent.
func cgroupsPath(parent, name string) string {
	return path.Join(parent, name)
}
