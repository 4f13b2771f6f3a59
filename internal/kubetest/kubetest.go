// Package kubetest runs a real single-node Kubernetes (v1.37 apiserver,
// controller-manager, scheduler and kubelet, etcd 3.7, Debian's containerd
// 1.6 with runc and the CNI bridge) for integration tests, from binaries
// that internal/kubetest/build.sh (make kube-testbed; .ci/run) builds once
// per machine into $ATELIER_TEST_KUBE_DIR.
//
// The API:
//
//	c := kubetest.Start(t)        // a private bed, torn down by t.Cleanup
//	kubetest.Start(t, kubetest.WithNetworkPolicies()) // ... that enforces NetworkPolicies (kube-router)
//	c := kubetest.Shared(t)       // one bed per test binary; TestMain calls kubetest.Main(m)
//	c.Config()                    // *rest.Config (admin, system:masters)
//	c.Clientset()                 // kubernetes.Interface on that config
//	c.Kubeconfig()                // the same as a kubeconfig file
//	c.Namespace(t)                // a fresh namespace with its default ServiceAccount, deleted at cleanup
//	c.ImportImage(t, ociTar)      // an OCI layout tar (see WriteImage) into the node's containerd
//	c.BusyboxImage(t)             // BusyboxRef imported: Debian's busybox-static with applet links
//	c.HTTPClient(), c.DialContext // reach pod IPs, which live in the bed's network namespace
//
// Pods must use imagePullPolicy Never (or IfNotPresent with an imported
// image): there is no registry. kube-proxy is not run, so ClusterIP
// Services do not route; reach pods by their IP.
//
// Isolation: every daemon runs in one network and mount namespace that the
// bed creates (unshare) and enters (nsenter), never the host's. Inside it
// /run, /var/log and /var/lib are private tmpfs mounts, so the kubelet's
// /var/log/pods and /var/log/containers, CNI's /var/lib/cni, containerd's
// shim sockets under /run/containerd and the pods' /run/netns files never
// reach the host; the CNI bridge kt0 (10.244.0.0/24, the node IP is
// 10.244.0.1) and the portmap rules exist only in that namespace. The
// apiserver is reached from the host through a loopback proxy the test
// process runs. The kubelet's pods live under a cgroup root of their own
// (/atelier-kt-RANDOM in every hierarchy). What the kubelet changes on the
// host regardless, the kernel tunables it sets at start (vm.overcommit_memory,
// vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
// kernel.keys.root_maxkeys, kernel.keys.root_maxbytes), is recorded before
// the first bed on the machine starts and written back when the last one
// stops. Teardown kills every process in the bed's cgroup root and mount
// namespace (containers, shims, containerd, the control plane), which
// drops every mount the bed made, then removes the cgroups and the
// directory.
//
// Missing prerequisites (root, the built binaries, containerd, runc, the CNI
// plugins) skip the test, or fail it under ATELIER_TEST_STRICT.
package kubetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"atelier/internal/testenv"
)

const (
	// EnvKubeDir names the directory build.sh fills; .ci/run exports it.
	EnvKubeDir = "ATELIER_TEST_KUBE_DIR"
	// KubeVersion is the Kubernetes release build.sh builds.
	KubeVersion = "1.37.2"
	// NodeName is the bed's only node.
	NodeName = "kt-node"
	// NodeIP is the node's InternalIP: the CNI bridge's address inside the
	// bed's network namespace.
	NodeIP = "10.244.0.1"
	// PodSubnet is where pod IPs come from (host-local IPAM on the bridge).
	PodSubnet = "10.244.0.0/24"
	// ServiceCIDR is where ClusterIPs come from (no kube-proxy routes them).
	ServiceCIDR = "10.96.0.0/24"
	// PauseRef is the pod sandbox image, built from build.sh's pause binary.
	PauseRef = "localhost/atelier-kubetest/pause:1"
	// BusyboxRef is the image BusyboxImage imports.
	BusyboxRef = "localhost/atelier-kubetest/busybox:1"

	bridgeName = "kt0"
	apiPort    = 6443
	cniBinDir  = "/usr/lib/cni"
)

// DefaultKubeDir is where build.sh puts the binaries when EnvKubeDir is unset.
var DefaultKubeDir = "/var/cache/atelier-test/kube/v" + KubeVersion

// Cluster is a running bed. Its methods are safe for concurrent use.
type Cluster struct {
	dir        string // everything the bed writes on the host's file system
	binDir     string
	cgroupRoot string // e.g. /atelier-kt-1a2b3c4d, in every cgroup hierarchy
	logf       func(format string, args ...any)

	holder *exec.Cmd // sleep, the process that holds the namespaces
	nsPID  int
	mntNS  string // readlink of /proc/PID/ns/mnt, to find its processes at teardown
	netNS  netns.NsHandle
	// nsMu guards netNS: a dial enters it while teardown may close it.
	nsMu sync.RWMutex

	mu    sync.Mutex
	procs []*proc
	conns map[net.Conn]struct{}
	proxy net.Listener

	config     *rest.Config
	clientset  *kubernetes.Clientset
	kubeconfig string
	sysctls    *sysctlLease
	pki        *pki

	busyboxOnce sync.Once
	busyboxErr  error

	stopOnce sync.Once
	stopErr  error
	stopped  atomic.Bool

	// StartDuration is how long Start took, from nothing to the node Ready.
	StartDuration time.Duration
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// Config returns a copy of the admin client configuration.
func (c *Cluster) Config() *rest.Config { return rest.CopyConfig(c.config) }

// Clientset returns a clientset on the admin configuration.
func (c *Cluster) Clientset() kubernetes.Interface { return c.clientset }

// Kubeconfig returns the path of an admin kubeconfig for the bed.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// ContainerdAddress is the node containerd's socket, for tests of code that
// runs ctr itself (namespace k8s.io is the kubelet's).
func (c *Cluster) ContainerdAddress() string { return filepath.Join(c.dir, "containerd.sock") }

// HTTPClient returns a client whose connections are made inside the bed's
// network namespace, so pod IPs are reachable.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{DialContext: c.DialContext, DisableKeepAlives: true},
	}
}

// DialContext dials addr from inside the bed's network namespace: the
// socket is made on a locked thread switched into the namespace and stays
// there. A thread that cannot be switched back stays locked, so Go discards
// it and no other goroutine runs in the wrong namespace.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		c.nsMu.RLock()
		err = errors.New("the bed is stopped")
		if c.netNS.IsOpen() {
			err = netns.Set(c.netNS)
		}
		c.nsMu.RUnlock()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter bed netns: %w", err)}
			return
		}
		var d net.Dialer
		conn, derr := d.DialContext(ctx, network, addr)
		if err := netns.Set(orig); err != nil {
			if conn != nil {
				conn.Close()
			}
			ch <- result{err: fmt.Errorf("restore netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{conn, derr}
	}()
	r := <-ch
	return r.conn, r.err
}

// prerequisites returns the binaries' directory, or why the bed cannot run.
func prerequisites() (string, string) {
	if os.Geteuid() != 0 {
		return "", "needs root (namespaces, cgroups, containerd)"
	}
	binDir := os.Getenv(EnvKubeDir)
	if binDir == "" {
		binDir = DefaultKubeDir
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "etcd", "pause"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return "", fmt.Sprintf("%s missing in %s (run make kube-testbed)", b, binDir)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter", "unshare", "ip", "mount", "sleep"} {
		if _, err := exec.LookPath(b); err != nil {
			return "", fmt.Sprintf("%s not found (apt-get install containerd runc util-linux iproute2)", b)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			return "", fmt.Sprintf("CNI plugin %s missing in %s (apt-get install containernetworking-plugins)", p, cniBinDir)
		}
	}
	return binDir, ""
}

// Start brings up a private bed and registers its teardown with t.Cleanup.
// It takes 15–60 s; tests that can share one should use Shared.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	var o startOptions
	for _, f := range opts {
		f(&o)
	}
	binDir, why := prerequisites()
	if why == "" && o.netpol {
		why = netpolPrerequisites(binDir)
	}
	if why != "" {
		testenv.Missing(t, "kubernetes test bed: %s", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := start(ctx, binDir, o, t.Logf)
	if err != nil {
		if c != nil {
			t.Log(c.logTails())
			if serr := c.Stop(); serr != nil {
				t.Errorf("stop the failed bed: %v", serr)
			}
		}
		t.Fatalf("start kubernetes test bed: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop kubernetes test bed: %v", err)
		}
	})
	return c
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the test binary's bed, starting it on first use. It is
// stopped by Main (or StopShared), so a package using it needs
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
func Shared(t testing.TB) *Cluster {
	t.Helper()
	binDir, why := prerequisites()
	if why != "" {
		testenv.Missing(t, "kubernetes test bed: %s", why)
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		c, err := start(ctx, binDir, startOptions{}, func(string, ...any) {})
		if err != nil && c != nil {
			err = fmt.Errorf("%w\n%s", err, c.logTails())
			err = errors.Join(err, c.Stop())
			c = nil
		}
		shared.c, shared.err = c, err
	})
	if shared.err != nil {
		t.Fatalf("start kubernetes test bed: %v", shared.err)
	}
	return shared.c
}

// StopShared stops the bed Shared started, if any.
func StopShared() error {
	if shared.c == nil {
		return nil
	}
	return shared.c.Stop()
}

// Main runs the package's tests and then stops the shared bed.
func Main(m *testing.M) {
	code := m.Run()
	if err := StopShared(); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: stop shared bed: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// start builds the bed step by step. On error the partial bed is returned
// too, for its logs and its teardown.
func start(ctx context.Context, binDir string, o startOptions, logf func(string, ...any)) (*Cluster, error) {
	began := time.Now()
	// A short path: unix socket paths under it must stay below 108 bytes.
	dir, err := os.MkdirTemp("", "kt-")
	if err != nil {
		return nil, fmt.Errorf("create bed dir: %w", err)
	}
	c := &Cluster{dir: dir, binDir: binDir, logf: logf, cgroupRoot: "/atelier-kt-" + randHex(4), conns: map[net.Conn]struct{}{}}
	for _, d := range []string{"logs", "pki", "etcd", "containerd", "cni", "cni-ipam", "kubelet", "kubelet-plugins", "images"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return c, fmt.Errorf("create bed dir: %w", err)
		}
	}
	if c.sysctls, err = acquireSysctls(); err != nil {
		return c, err
	}
	if err := makeCgroupRoot(c.cgroupRoot); err != nil {
		return c, err
	}
	if err := c.startHolder(ctx); err != nil {
		return c, err
	}
	p, err := c.writeConfig()
	if err != nil {
		return c, err
	}
	c.pki = p
	if err := c.run("etcd", filepath.Join(binDir, "etcd"),
		"--name=kt", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=kt=http://127.0.0.1:2380",
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return c, err
	}
	if err := c.run("containerd", "containerd", "--config", filepath.Join(dir, "containerd.toml")); err != nil {
		return c, err
	}
	if err := c.run("kube-apiserver", filepath.Join(binDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port="+strconv.Itoa(apiPort), "--advertise-address="+NodeIP,
		"--cert-dir="+filepath.Join(dir, "apiserver"),
		"--tls-cert-file="+p.path("apiserver.crt"), "--tls-private-key-file="+p.path("apiserver.key"),
		"--client-ca-file="+p.path("ca.crt"),
		"--kubelet-client-certificate="+p.path("apiserver-kubelet.crt"), "--kubelet-client-key="+p.path("apiserver-kubelet.key"),
		"--kubelet-certificate-authority="+p.path("ca.crt"), "--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.path("sa.pub"), "--service-account-signing-key-file="+p.path("sa.key"),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true", "--profiling=false", "--v=1"); err != nil {
		return c, err
	}
	if err := c.startProxy(); err != nil {
		return c, err
	}
	if err := c.waitContainerd(ctx); err != nil {
		return c, err
	}
	pauseTar := filepath.Join(dir, "images", "pause.tar")
	pause, err := os.ReadFile(filepath.Join(binDir, "pause"))
	if err != nil {
		return c, fmt.Errorf("read pause binary: %w", err)
	}
	if err := WriteImage(pauseTar, PauseRef, []string{"/pause"}, ImageFile{Name: "pause", Mode: 0o755, Data: pause}); err != nil {
		return c, err
	}
	if err := c.importImage(ctx, pauseTar); err != nil {
		return c, err
	}
	if err := c.waitAPI(ctx); err != nil {
		return c, err
	}
	kc := func(n string) string { return "--kubeconfig=" + filepath.Join(dir, n+".kubeconfig") }
	if err := c.run("kube-controller-manager", filepath.Join(binDir, "kube-controller-manager"),
		kc("controller-manager"), "--leader-elect=false", "--bind-address=127.0.0.1",
		"--root-ca-file="+p.path("ca.crt"), "--service-account-private-key-file="+p.path("sa.key"),
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file="+p.path("ca.crt"), "--cluster-signing-key-file="+p.path("ca.key"),
		"--cluster-name=kubetest", "--flex-volume-plugin-dir="+filepath.Join(dir, "kubelet-plugins"), "--v=1"); err != nil {
		return c, err
	}
	if err := c.run("kube-scheduler", filepath.Join(binDir, "kube-scheduler"),
		kc("scheduler"), "--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"); err != nil {
		return c, err
	}
	if err := c.run("kubelet", filepath.Join(binDir, "kubelet"),
		"--config="+filepath.Join(dir, "kubelet.yaml"), kc("kubelet"),
		"--root-dir="+filepath.Join(dir, "kubelet"), "--hostname-override="+NodeName,
		"--node-ip="+NodeIP, "--v=1"); err != nil {
		return c, err
	}
	if err := c.waitNodeReady(ctx); err != nil {
		return c, err
	}
	if o.netpol {
		if err := c.startNetworkPolicies(ctx); err != nil {
			return c, err
		}
	}
	c.StartDuration = time.Since(began)
	logf("kubernetes test bed up in %s (dir %s, cgroup root %s)", c.StartDuration.Round(time.Millisecond), dir, c.cgroupRoot)
	return c, nil
}

// holderScript runs inside the new namespaces: private tmpfs over the
// directories the kubelet, CNI and containerd insist on using, then the
// bridge the CNI bridge plugin will attach pods to (made here so the node
// IP exists before the kubelet starts).
//
// First it drops the mounts it inherited that pin host resources: a loop
// device's filesystem (test pools, sandbox disks), an overlay, or a network
// namespace's nsfs file. With private propagation the host's later unmounts
// never reach this namespace, so a copy kept here would hold the loop device
// busy ("still in use, probably by another mount namespace") or keep a
// deleted network namespace and its links alive for the bed's whole life.
// Nothing in the bed uses them; this runs before /run is covered, while the
// netns paths still resolve.
const holderScript = `set -e
awk '$1 ~ /^\/dev\/loop/ || $3 == "overlay" || $3 == "nsfs" {print $2}' /proc/self/mounts | sort -r |
while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t tmpfs -o mode=0755 kt-run /run
mount -t tmpfs -o mode=0755 kt-log /var/log
mount -t tmpfs -o mode=0755 kt-lib /var/lib
mkdir -p /run/netns /var/lib/cni /var/log/pods /var/log/containers
ip link set lo up
ip link add ` + bridgeName + ` type bridge
ip addr add ` + NodeIP + `/24 dev ` + bridgeName + `
ip link set ` + bridgeName + ` up
echo ready
exec sleep infinity
`

func (c *Cluster) startHolder(ctx context.Context) error {
	logf, err := os.Create(filepath.Join(c.dir, "logs", "holder.log"))
	if err != nil {
		return fmt.Errorf("create holder log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("unshare", "--net", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", holderScript)
	cmd.Stderr = logf
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("holder stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start namespace holder: %w", err)
	}
	c.holder, c.nsPID = cmd, cmd.Process.Pid
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case err := <-ready:
		if err != nil {
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("namespace holder: %w: %s", err, b)
		}
	case <-ctx.Done():
		return fmt.Errorf("namespace holder: %w", ctx.Err())
	}
	if c.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.nsPID)); err != nil {
		return fmt.Errorf("read holder mount namespace: %w", err)
	}
	if c.netNS, err = netns.GetFromPid(c.nsPID); err != nil {
		return fmt.Errorf("open holder netns: %w", err)
	}
	return nil
}

// run starts bin inside the bed's namespaces with its output in logs/NAME.log.
func (c *Cluster) run(name, bin string, args ...string) error {
	logPath := filepath.Join(c.dir, "logs", name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("create %s log: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--target", strconv.Itoa(c.nsPID), "--net", "--mount", "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.dir
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + c.dir, "TMPDIR=" + c.dir}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

// exited reports a daemon that died, so waits fail fast with its log.
func (c *Cluster) exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v): %s", p.name, p.cmd.ProcessState, tail(p.log, 2000))
		default:
		}
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (c *Cluster) logTails() string {
	var sb strings.Builder
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		fmt.Fprintf(&sb, "--- %s (%s) ---\n%s\n", p.name, p.log, tail(p.log, 1500))
	}
	return sb.String()
}

// poll calls fn every interval until it returns true, an error, a daemon
// dies, or ctx ends.
func (c *Cluster) poll(ctx context.Context, what string, fn func() (bool, error)) error {
	var last error
	for {
		ok, err := fn()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if err := c.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitContainerd(ctx context.Context) error {
	sock := filepath.Join(c.dir, "containerd.sock")
	return c.poll(ctx, "containerd", func() (bool, error) {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			return false, err
		}
		conn.Close()
		return true, nil
	})
}

func (c *Cluster) waitAPI(ctx context.Context) error {
	return c.poll(ctx, "kube-apiserver /readyz", func() (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := c.clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		if err != nil {
			return false, err
		}
		return strings.TrimSpace(string(body)) == "ok", nil
	})
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	return c.poll(ctx, "node "+NodeName+" Ready", func() (bool, error) {
		n, err := c.clientset.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, fmt.Errorf("node not ready: %s", cond.Message)
			}
		}
		return false, nil
	})
}

// startProxy serves the apiserver, which listens inside the bed's network
// namespace, on a host loopback port.
func (c *Cluster) startProxy() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the apiserver proxy: %w", err)
	}
	c.proxy = ln
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			go c.pipe(down)
		}
	}()
	cfg, err := c.writeAdminKubeconfig(ln.Addr().String())
	if err != nil {
		return err
	}
	c.config = cfg
	c.clientset, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("clientset: %w", err)
	}
	return nil
}

func (c *Cluster) track(conn net.Conn, add bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if add {
		if c.conns == nil {
			return false // stopped
		}
		c.conns[conn] = struct{}{}
	} else if c.conns != nil {
		delete(c.conns, conn)
	}
	return true
}

func (c *Cluster) pipe(down net.Conn) {
	defer down.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := c.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort)))
	cancel()
	if err != nil {
		return
	}
	defer up.Close()
	if !c.track(down, true) || !c.track(up, true) {
		return
	}
	defer c.track(down, false)
	defer c.track(up, false)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, down); done <- struct{}{} }()
	go func() { _, _ = io.Copy(down, up); done <- struct{}{} }()
	<-done
}

// ctr runs containerd's CLI against the bed's containerd in its namespaces.
func (c *Cluster) ctr(ctx context.Context, args ...string) error {
	full := append([]string{"--target", strconv.Itoa(c.nsPID), "--net", "--mount", "--",
		"ctr", "--address", filepath.Join(c.dir, "containerd.sock"), "--namespace", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *Cluster) importImage(ctx context.Context, ociTar string) error {
	abs, err := filepath.Abs(ociTar)
	if err != nil {
		return fmt.Errorf("image path: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return c.ctr(ctx, "images", "import", abs)
}

// ImportImage imports an OCI layout tarball (WriteImage makes one) into the
// node's containerd under the name its index annotations give.
func (c *Cluster) ImportImage(t testing.TB, ociTar string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.importImage(ctx, ociTar); err != nil {
		t.Fatalf("import image: %v", err)
	}
}

// BusyboxImage imports BusyboxRef (Debian's static busybox and applet links
// for sh, cat, echo, httpd, sleep, wget and a few more) once per bed and
// returns the ref.
func (c *Cluster) BusyboxImage(t testing.TB) string {
	t.Helper()
	c.busyboxOnce.Do(func() {
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			c.busyboxErr = fmt.Errorf("read /bin/busybox (apt-get install busybox-static): %w", err)
			return
		}
		tarPath := filepath.Join(c.dir, "images", "busybox.tar")
		if err := WriteImage(tarPath, BusyboxRef, []string{"/bin/sh"}, busyboxFiles(bb)...); err != nil {
			c.busyboxErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c.busyboxErr = c.importImage(ctx, tarPath)
	})
	if c.busyboxErr != nil {
		if errors.Is(c.busyboxErr, os.ErrNotExist) {
			testenv.Missing(t, "busybox image: %v", c.busyboxErr)
		}
		t.Fatalf("busybox image: %v", c.busyboxErr)
	}
	return BusyboxRef
}

// Namespace creates a namespace, waits for its default ServiceAccount and
// root CA ConfigMap (pods need both), and deletes it at cleanup, waiting
// until it is gone so its pods' containers are too.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := c.clientset.CoreV1()
	ns, err := cs.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kt-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	name := ns.Name
	t.Cleanup(func() {
		if c.stopped.Load() {
			return // the namespace went with the bed
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.DeleteNamespace(ctx, name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	err = c.poll(ctx, "namespace "+name+" ready", func() (bool, error) {
		if _, err := cs.ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, err
		}
		if _, err := cs.ConfigMaps(name).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	return name
}

// DeleteNamespace deletes a namespace and waits until it is gone; a
// namespace already gone is success.
func (c *Cluster) DeleteNamespace(ctx context.Context, name string) error {
	cs := c.clientset.CoreV1()
	if err := cs.Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return c.poll(ctx, "namespace "+name+" gone", func() (bool, error) {
		_, err := cs.Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// Stop tears the bed down; later calls return the first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.stopped.Store(true)
		c.stopErr = c.teardown()
	})
	return c.stopErr
}

func (c *Cluster) teardown() error {
	var errs []error
	c.mu.Lock()
	if c.proxy != nil {
		c.proxy.Close()
	}
	for conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
	procs := c.procs
	c.mu.Unlock()
	// The kubelet first, so it does not restart containers while they are killed.
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill %s: %w", p.name, err))
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("%s did not exit", p.name))
		}
	}
	if err := killCgroupTree(c.cgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if c.mntNS != "" {
		if err := killNamespace(c.mntNS); err != nil {
			errs = append(errs, err)
		}
	}
	if c.holder != nil {
		_ = c.holder.Process.Kill()
		_ = c.holder.Wait()
	}
	c.nsMu.Lock()
	if c.netNS.IsOpen() {
		c.netNS.Close()
	}
	c.nsMu.Unlock()
	if err := removeCgroupRoot(c.cgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if c.sysctls != nil {
		if err := c.sysctls.release(); err != nil {
			errs = append(errs, err)
		}
	}
	// The bed's mounts lived in its mount namespace, gone with its last
	// process; nothing under dir is mounted on the host.
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove bed dir: %w", err))
	}
	return errors.Join(errs...)
}

// killNamespace SIGKILLs every process in the mount namespace ns (the
// daemons, containerd's shims, anything they left) until none is left.
func killNamespace(ns string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := pidsWhere(func(pid int) bool {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
			return err == nil && l == ns
		})
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in the bed's mount namespace survive SIGKILL", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pidsWhere(match func(pid int) bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && isZombie(st) {
			continue
		}
		if match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isZombie reads the state field of /proc/PID/stat ("pid (comm) S ...").
func isZombie(stat []byte) bool {
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
