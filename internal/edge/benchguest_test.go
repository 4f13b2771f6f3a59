package edge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// guestEnv makes the test binary a benchmark guest instead of running
// tests (see benchGuest).
const guestEnv = "ATELIER_EDGE_BENCH_GUEST"

func TestMain(m *testing.M) {
	if size := os.Getenv(guestEnv); size != "" {
		os.Exit(guestMain(size))
	}
	os.Exit(m.Run())
}

// guestMain serves guestHandler on a loopback port, prints the port, and
// exits when stdin closes (the benchmark ended or died).
func guestMain(size string) int {
	n, err := strconv.Atoi(size)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench guest: size:", err)
		return 2
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench guest:", err)
		return 1
	}
	go http.Serve(l, guestHandler(n))
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchGuest runs guestHandler in a process of its own held to vcpus CPUs,
// as a sandbox's dev server is: a Firecracker guest has that many vCPU
// threads, and the container runtime sets the same CFS quota. The edge
// and the client run on the host's other cores, as they would on a host
// where sandboxes do not take every core. The quota needs root (a cgroup);
// without it only GOMAXPROCS holds the guest, and the run says so.
func benchGuest(b *testing.B, size, vcpus int) int {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), guestEnv+"="+strconv.Itoa(size), "GOMAXPROCS="+strconv.Itoa(vcpus))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	cgroup := "" // removed once the guest has exited
	b.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("bench guest: %v", err)
		}
		if cgroup != "" {
			if err := os.Remove(cgroup); err != nil {
				b.Errorf("remove %s: %v", cgroup, err)
			}
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("bench guest: no port: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		b.Fatalf("bench guest: port %q", line)
	}
	if cgroup, err = capCPU(cmd.Process.Pid, vcpus); err != nil {
		b.Logf("bench guest not held to %d CPU by a cgroup (%v); GOMAXPROCS=%d only", vcpus, err, vcpus)
	}
	return port
}

// capCPU puts pid in a cgroup of its own with a CFS quota of vcpus CPUs
// (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us) and returns the cgroup's
// directory, also when only creating it worked.
func capCPU(pid, vcpus int) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("not root")
	}
	const period = 100000
	name := fmt.Sprintf("atlt-edgebench-%d", pid)
	var dir string
	var limits [][2]string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir = filepath.Join("/sys/fs/cgroup", name)
		limits = [][2]string{{"cpu.max", fmt.Sprintf("%d %d", vcpus*period, period)}}
	} else {
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		limits = [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", strconv.Itoa(vcpus * period)}}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	for _, l := range limits {
		if err := os.WriteFile(filepath.Join(dir, l[0]), []byte(l[1]), 0o644); err != nil {
			return dir, err
		}
	}
	return dir, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}
