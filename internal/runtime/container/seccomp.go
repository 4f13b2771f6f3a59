package container

import (
	"fmt"
	"runtime"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// seccompProfile is Docker's default seccomp profile, maintained by the
// Moby project, for a process with our capability set: the profile opens
// some syscalls only to holders of a capability (CAP_SYS_ADMIN's mount,
// unshare and clone of namespaces, for one), and none of those is ours.
// Everything else it does not list fails with EPERM: keyrings, kexec,
// kernel modules, BPF, perf, userfaultfd, open_by_handle_at, new
// namespaces, mounts, and so on.
func seccompProfile() (*specs.LinuxSeccomp, error) {
	s := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{
		Bounding: capabilities, Effective: capabilities, Permitted: capabilities,
	}}}
	p, err := seccomp.GetDefaultProfile(s)
	if err != nil {
		return nil, fmt.Errorf("build the default seccomp profile: %w", err)
	}
	// The native ABI only. Docker's profile also admits the 32-bit ones
	// (x86 and x32 on amd64), which triples the filter runc compiles with
	// libseccomp at every start: 20 ms more per boot on an idle build
	// machine, 110 ms on a loaded one (BenchmarkBootIsolation). Sandboxes
	// therefore cannot run 32-bit programs, and the compat syscall layer,
	// a steady source of kernel bugs, is out of a hostile guest's reach.
	if len(p.Architectures) == 0 {
		return nil, fmt.Errorf("the default seccomp profile knows no architecture for %s", runtime.GOARCH)
	}
	p.Architectures = p.Architectures[:1]
	return p, nil
}
