// Command fcfake is the static stand-in for firecracker and its jailer
// that the jailed driver tests run: installed as "jailer" it is the fake
// jailer (fctest.RunFakeJailer), under any other name the fake firecracker
// (fctest.RunFake). It is static (CGO_ENABLED=0) so that it runs inside
// the jailer's chroot, where there is no libc.
package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"atelier/internal/runtime/firecracker/fctest"
)

// The jailer moves itself into cgroup v1 "tasks", which takes one thread,
// then execs: both must happen on the main thread, or the exec'd process
// is not in the cgroup.
func init() { runtime.LockOSThread() }

func main() {
	if strings.HasPrefix(filepath.Base(os.Args[0]), "jailer") {
		os.Exit(fctest.RunFakeJailer(os.Args[1:]))
	}
	os.Exit(fctest.RunFake(os.Args[1:]))
}
