package container

import (
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"atelier/internal/sandbox"
)

func testParams() specParams {
	return specParams{
		AgentPath:   "/sbin/atelier-agent",
		NetnsPath:   "/var/run/netns/atelier-abcdefghijkl",
		CgroupsPath: "/atelier/atelier-abcdefghijkl",
		Cgroups:     cgroupSupport{CPU: true, Memory: true, Pids: true},
		NoFile:      4096,
		ResolvConf:  "/b/resolv.conf",
		Hosts:       "/b/hosts",
		Hostname:    "/b/hostname",
		SocketDir:   "/s/abcdefghijkl",
		Sysfs:       "/b/sys",
	}
}

func mountAt(s *specs.Spec, dest string) *specs.Mount {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == dest {
			return &s.Mounts[i]
		}
	}
	return nil
}

func TestBuildSpec(t *testing.T) {
	const id = "abcdefghijkl"
	inst := sandbox.Instance{ID: id, Vcpus: 2, MemoryMB: 1024, Disk: "/v/abcdefghijkl.ext4"}
	s := buildSpec(id, inst, testParams())

	// What runc reads must survive the JSON round trip.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Hostname != "sandbox-"+id {
		t.Errorf("hostname %q", got.Hostname)
	}
	if got.Root == nil || got.Root.Path != "rootfs" || got.Root.Readonly {
		t.Errorf("root %+v, want writable rootfs", got.Root)
	}
	if want := []string{"/sbin/atelier-agent", "init", "--kernel-cmdline=false", "--",
		"--unix", "/run/atelier/agent.sock", "--vsock-port", "0", "--sandbox-id", id}; !slices.Equal(got.Process.Args, want) {
		t.Errorf("args %q, want %q", got.Process.Args, want)
	}
	for _, env := range []string{"ATELIER_AGENT_SOCKET=/run/atelier/agent.sock", "ATELIER_SANDBOX_ID=" + id, "HOME=/root"} {
		if !slices.Contains(got.Process.Env, env) {
			t.Errorf("env lacks %s: %q", env, got.Process.Env)
		}
	}
	if got.Process.User.UID != 0 || got.Process.Terminal {
		t.Errorf("process runs as uid %d, terminal %v; want root without a terminal", got.Process.User.UID, got.Process.Terminal)
	}
	caps := got.Process.Capabilities
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SYS_TIME", "CAP_SYS_RAWIO", "CAP_SYS_RESOURCE"} {
		if slices.Contains(caps.Bounding, c) || slices.Contains(caps.Effective, c) {
			t.Errorf("capability %s granted", c)
		}
	}
	for _, c := range []string{"CAP_CHOWN", "CAP_SETUID", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"} {
		if !slices.Contains(caps.Bounding, c) {
			t.Errorf("capability %s missing from the bounding set", c)
		}
	}
	if len(got.Process.Rlimits) != 1 || got.Process.Rlimits[0].Hard != 4096 {
		t.Errorf("rlimits %+v, want NOFILE 4096", got.Process.Rlimits)
	}

	var nsTypes []specs.LinuxNamespaceType
	for _, ns := range got.Linux.Namespaces {
		nsTypes = append(nsTypes, ns.Type)
		if ns.Type == specs.NetworkNamespace && ns.Path != "/var/run/netns/atelier-abcdefghijkl" {
			t.Errorf("network namespace path %q", ns.Path)
		}
		if ns.Type != specs.NetworkNamespace && ns.Path != "" {
			t.Errorf("%s namespace joins %q; want a new one", ns.Type, ns.Path)
		}
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.NetworkNamespace} {
		if !slices.Contains(nsTypes, want) {
			t.Errorf("namespace %s missing: %v", want, nsTypes)
		}
	}
	if slices.Contains(nsTypes, specs.UserNamespace) || len(got.Linux.UIDMappings) > 0 {
		t.Error("user namespace set without an id range")
	}
	if !got.Process.NoNewPrivileges {
		t.Error("no_new_privs off where guest root is host root")
	}
	if got.Linux.Seccomp != nil || len(got.Linux.Sysctl) > 0 {
		t.Errorf("seccomp %v / sysctls %v, want none (the runtime passes the filter; the host writes the sysctls)", got.Linux.Seccomp, got.Linux.Sysctl)
	}
	if got.Linux.CgroupsPath != "/atelier/atelier-abcdefghijkl" {
		t.Errorf("cgroups path %q", got.Linux.CgroupsPath)
	}
	if !slices.Contains(got.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(got.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("masked %v / readonly %v lack runc's defaults", got.Linux.MaskedPaths, got.Linux.ReadonlyPaths)
	}
	if got.Annotations[annotationID] != id || got.Annotations[annotationDisk] != inst.Disk {
		t.Errorf("annotations %v", got.Annotations)
	}

	mounts := []struct {
		dest, typ, source string
		opts              []string
	}{
		{"/proc", "proc", "proc", nil},
		{"/sys", "bind", "/b/sys", []string{"ro", "nosuid", "nodev", "noexec"}},
		{"/dev", "tmpfs", "tmpfs", nil},
		{"/dev/pts", "devpts", "devpts", []string{"newinstance"}},
		{"/dev/shm", "tmpfs", "shm", []string{"size=256m"}},
		{"/dev/mqueue", "mqueue", "mqueue", nil},
		{"/run", "tmpfs", "tmpfs", nil},
		{"/run/atelier", "bind", "/s/abcdefghijkl", []string{"bind", "rw"}},
		{"/etc/resolv.conf", "bind", "/b/resolv.conf", []string{"bind"}},
		{"/etc/hosts", "bind", "/b/hosts", []string{"bind"}},
		{"/etc/hostname", "bind", "/b/hostname", []string{"bind"}},
	}
	for _, m := range mounts {
		gm := mountAt(&got, m.dest)
		if gm == nil {
			t.Errorf("no mount at %s", m.dest)
			continue
		}
		if gm.Type != m.typ || gm.Source != m.source {
			t.Errorf("mount %s: type %s source %s, want %s %s", m.dest, gm.Type, gm.Source, m.typ, m.source)
		}
		for _, o := range m.opts {
			if !slices.Contains(gm.Options, o) {
				t.Errorf("mount %s lacks option %s: %v", m.dest, o, gm.Options)
			}
		}
	}
	// /run must come before the socket dir mounted into it.
	if i, j := slices.IndexFunc(got.Mounts, func(m specs.Mount) bool { return m.Destination == "/run" }),
		slices.IndexFunc(got.Mounts, func(m specs.Mount) bool { return m.Destination == "/run/atelier" }); i > j {
		t.Errorf("/run (#%d) is mounted after /run/atelier (#%d) and would hide it", i, j)
	}
}

func TestBuildSpecUserNamespace(t *testing.T) {
	p := testParams()
	p.IDMap = &idRange{HostID: 0x70010000, Size: 65536}
	sc, err := seccompProfile()
	if err != nil {
		t.Fatal(err)
	}
	p.Seccomp = sc
	s := buildSpec("abcdefghijkl", sandbox.Instance{ID: "abcdefghijkl"}, p)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got specs.Spec
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(got.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.UserNamespace })
	if i < 0 || got.Linux.Namespaces[i].Path != "" {
		t.Fatalf("namespaces %+v, want a new user namespace", got.Linux.Namespaces)
	}
	want := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0x70010000, Size: 65536}}
	if !slices.Equal(got.Linux.UIDMappings, want) || !slices.Equal(got.Linux.GIDMappings, want) {
		t.Errorf("mappings uid %+v gid %+v, want %+v", got.Linux.UIDMappings, got.Linux.GIDMappings, want)
	}
	if got.Process.NoNewPrivileges {
		t.Error("no_new_privs on in a user namespace: sudo would not work")
	}
	if got.Linux.Seccomp == nil || got.Linux.Seccomp.DefaultAction != specs.ActErrno || len(got.Linux.Seccomp.Syscalls) == 0 {
		t.Fatalf("seccomp %+v, want the default profile", got.Linux.Seccomp)
	}
	if runtime.GOARCH == "amd64" && !slices.Equal(got.Linux.Seccomp.Architectures, []specs.Arch{specs.ArchX86_64}) {
		t.Errorf("seccomp architectures %v, want the native one only", got.Linux.Seccomp.Architectures)
	}
	// The capability-gated rules of the profile follow our capability
	// set: none of CAP_SYS_ADMIN's syscalls is open.
	for _, rule := range got.Linux.Seccomp.Syscalls {
		if rule.Action != specs.ActAllow {
			continue
		}
		for _, name := range []string{"mount", "unshare", "setns", "keyctl", "add_key", "bpf", "perf_event_open", "kexec_load", "open_by_handle_at"} {
			if slices.Contains(rule.Names, name) {
				t.Errorf("seccomp profile allows %s: %+v", name, rule)
			}
		}
	}
}

func TestHostIDRange(t *testing.T) {
	tests := []struct {
		ip     string
		prefix int
		want   uint32 // 0: an error
	}{
		{"172.16.0.1", 24, idRangeBase},
		{"172.16.0.2", 24, idRangeBase + idRangeSize},
		{"172.16.0.254", 24, idRangeBase + 253*idRangeSize},
		{"10.0.15.254", 20, idRangeBase + 4093*idRangeSize}, // the last host of a /20
		{"10.1.0.1", 16, idRangeBase},
		{"10.1.15.254", 16, idRangeBase + 4093*idRangeSize},
		{"10.1.15.255", 16, 0}, // host 4095 of a /16: no range left
		{"172.16.0.0", 24, 0},
		{"", 24, 0},
		{"fd00::2", 64, 0},
		{"172.16.0.2", 0, 0},
		{"172.16.0.2", 31, 0},
	}
	for _, tc := range tests {
		r, err := hostIDRange(tc.ip, tc.prefix)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("hostIDRange(%q, %d) = %+v, want an error", tc.ip, tc.prefix, r)
			}
			continue
		}
		if err != nil || r.HostID != tc.want || r.Size != idRangeSize {
			t.Errorf("hostIDRange(%q, %d) = %+v, %v; want host id %d", tc.ip, tc.prefix, r, err, tc.want)
		}
	}
	// Ranges stay inside the block systemd leaves unused, below its
	// foreign range, and clear of 32-bit signed trouble.
	if end := uint64(idRangeBase) + uint64(maxSlot)*idRangeSize; end > 0x7FFE0000 {
		t.Errorf("last range ends at %#x, inside systemd's foreign range", end)
	}
	if maxSlot < 4094 {
		t.Errorf("maxSlot %d: a /20 bridge does not fit", maxSlot)
	}
}

func TestResources(t *testing.T) {
	all := cgroupSupport{CPU: true, Memory: true, Pids: true}
	tests := []struct {
		name      string
		vcpus, mb int
		cg        cgroupSupport
		quota     int64 // 0: no CPU limit
		memory    int64 // 0: no memory limit
		pids      bool
	}{
		{"all limits", 2, 1024, all, 200_000, 1 << 30, true},
		{"one vcpu", 1, 256, all, 100_000, 256 << 20, true},
		{"no limits asked", 0, 0, all, 0, 0, true},
		{"no cpu controller", 2, 512, cgroupSupport{Memory: true}, 0, 512 << 20, false},
		{"no memory controller", 4, 512, cgroupSupport{CPU: true}, 400_000, 0, false},
		{"no controllers", 4, 512, cgroupSupport{}, 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := resources(sandbox.Instance{Vcpus: tc.vcpus, MemoryMB: tc.mb}, tc.cg)
			switch {
			case tc.quota == 0 && r.CPU != nil:
				t.Errorf("CPU limit %+v, want none", r.CPU)
			case tc.quota != 0 && (r.CPU == nil || *r.CPU.Quota != tc.quota || *r.CPU.Period != cpuPeriod):
				t.Errorf("CPU limit %+v, want quota %d per %d", r.CPU, tc.quota, cpuPeriod)
			}
			switch {
			case tc.memory == 0 && r.Memory != nil:
				t.Errorf("memory limit %+v, want none", r.Memory)
			case tc.memory != 0 && (r.Memory == nil || *r.Memory.Limit != tc.memory):
				t.Errorf("memory limit %+v, want %d", r.Memory, tc.memory)
			}
			if (r.Pids != nil) != tc.pids {
				t.Errorf("pids limit %+v, want set=%v", r.Pids, tc.pids)
			}
			if len(r.Devices) != 1 || r.Devices[0].Allow || r.Devices[0].Access != "rwm" {
				t.Errorf("device rules %+v, want deny-all (runc adds its defaults)", r.Devices)
			}
		})
	}
}

func TestShmFollowsMemory(t *testing.T) {
	s := buildSpec("abcdefghijkl", sandbox.Instance{ID: "abcdefghijkl", MemoryMB: 128}, testParams())
	if m := mountAt(s, "/dev/shm"); m == nil || !slices.Contains(m.Options, "size=64m") {
		t.Errorf("/dev/shm of a 128 MB sandbox: %+v, want size=64m", m)
	}
}

func TestResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		dns     []string
		want    []string
		wantErr bool
	}{
		{"ipv4 and ipv6", []string{"172.16.0.1", " 2001:db8::53 "}, []string{"nameserver 172.16.0.1\n", "nameserver 2001:db8::53\n"}, false},
		{"mapped ipv4 unmapped", []string{"::ffff:8.8.8.8"}, []string{"nameserver 8.8.8.8\n"}, false},
		{"none", nil, nil, false},
		{"injection", []string{"8.8.8.8\noptions ndots:15"}, nil, true},
		{"hostname", []string{"dns.example.com"}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolvConf(tc.dns)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if n := strings.Count(got, "nameserver"); n != len(tc.want) {
				t.Errorf("%d nameserver lines, want %d:\n%s", n, len(tc.want), got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
		})
	}
}

func TestHostsFile(t *testing.T) {
	got, err := hostsFile("abcdefghijkl", "172.16.0.10")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "172.16.0.10\tsandbox-abcdefghijkl\n") || !strings.Contains(got, "127.0.0.1\tlocalhost\n") {
		t.Errorf("hosts:\n%s", got)
	}
	got, err = hostsFile("abcdefghijkl", "")
	if err != nil || !strings.Contains(got, "127.0.1.1\tsandbox-abcdefghijkl\n") {
		t.Errorf("hosts without an address: %v\n%s", err, got)
	}
	if _, err := hostsFile("abcdefghijkl", "172.16.0.10 evil"); err == nil {
		t.Error("an address with extra text was accepted")
	}
}
