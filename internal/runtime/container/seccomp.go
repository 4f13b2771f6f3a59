package container

import (
	"fmt"

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
	return p, nil
}
