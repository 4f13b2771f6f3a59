package kubetest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

func TestWriteImageLayout(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "img.tar")
	files := []ImageFile{
		{Name: "bin/tool", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		{Name: "bin/alias", Link: "tool"},
		{Name: "etc/conf/app.conf", Data: []byte("x=1\n")},
	}
	if err := WriteImage(dst, "localhost/t/img:1", []string{"/bin/tool"}, files...); err != nil {
		t.Fatal(err)
	}
	// Same input, same bytes: the digests are stable.
	again := filepath.Join(t.TempDir(), "img.tar")
	if err := WriteImage(again, "localhost/t/img:1", []string{"/bin/tool"}, files...); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(dst)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two writes of the same image differ")
	}

	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(a))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		blobs[h.Name] = data
	}
	var index struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, blobs["index.json"])
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "localhost/t/img:1" {
		t.Errorf("image name annotation = %q", got)
	}
	manifest, ok := blobs["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")]
	if !ok || digest(manifest) != index.Manifests[0].Digest {
		t.Fatalf("manifest blob missing or its digest is wrong")
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(manifest, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest: %v %s", err, manifest)
	}
	layer := blobs["blobs/sha256/"+strings.TrimPrefix(m.Layers[0].Digest, "sha256:")]
	if digest(layer) != m.Layers[0].Digest {
		t.Fatal("layer digest mismatch")
	}
	var names []string
	lr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, fmt.Sprintf("%s %c %o %s", h.Name, h.Typeflag, h.Mode, h.Linkname))
	}
	want := []string{"bin/ 5 755 ", "etc/ 5 755 ", "etc/conf/ 5 755 ", "bin/alias 2 777 tool", "bin/tool 0 755 ", "etc/conf/app.conf 0 644 "}
	if strings.Join(names, "|") != strings.Join(want, "|") {
		t.Errorf("layer entries\n got %q\nwant %q", names, want)
	}
}

func TestWriteImageRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		ref   string
		files []ImageFile
	}{
		{"empty ref", "", nil},
		{"ref with space", "a b", nil},
		{"escaping path", "localhost/x:1", []ImageFile{{Name: "../etc/passwd"}}},
		{"root path", "localhost/x:1", []ImageFile{{Name: "/"}}},
		{"duplicate", "localhost/x:1", []ImageFile{{Name: "a"}, {Name: "/a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := WriteImage(filepath.Join(dir, "x.tar"), tc.ref, nil, tc.files...); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// hostState is what a bed could leave behind on the host, restricted to
// what is recognisably the bed's, since other tests run beside it.
type hostState struct {
	sysctls map[string]string
	links   []string // host links named like the bed's bridge
	mounts  []string // host mount points the kubelet, CNI or containerd would make
	paths   []string // well-known paths the kubelet, CNI and containerd use by default
}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	var s hostState
	s.sysctls = map[string]string{}
	for _, n := range kubeletSysctls {
		v, err := readSysctl(n)
		if err != nil {
			t.Fatal(err)
		}
		s.sysctls[n] = v
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name == bridgeName {
			s.links = append(s.links, l.Attrs().Name)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (strings.Contains(f[4], "/kubelet/pods/") || strings.HasPrefix(f[4], "/run/containerd") ||
			strings.HasPrefix(f[4], "/run/netns/cni-") || strings.HasPrefix(f[4], "/var/log/pods")) {
			s.mounts = append(s.mounts, f[4])
		}
	}
	for _, p := range []string{"/var/log/pods", "/var/log/containers", "/var/lib/cni", "/var/lib/kubelet",
		"/var/lib/containerd", "/run/containerd", "/opt/containerd", "/etc/cni/net.d", "/run/kubernetes",
		"/usr/libexec/kubernetes", sysctlLockPath, sysctlStatePath} {
		if _, err := os.Lstat(p); err == nil {
			s.paths = append(s.paths, p)
		}
	}
	if m, _ := filepath.Glob("/run/netns/cni-*"); len(m) > 0 {
		s.paths = append(s.paths, m...)
	}
	for _, l := range [][]string{s.links, s.mounts, s.paths} {
		sort.Strings(l)
	}
	return s
}

func (s hostState) diff(after hostState) []string {
	var d []string
	for n, v := range s.sysctls {
		if after.sysctls[n] != v {
			d = append(d, fmt.Sprintf("sysctl %s: %s before, %s after", n, v, after.sysctls[n]))
		}
	}
	for _, l := range []struct {
		what          string
		before, after []string
	}{
		{"link", s.links, after.links}, {"mount", s.mounts, after.mounts}, {"path", s.paths, after.paths},
	} {
		had := map[string]bool{}
		for _, x := range l.before {
			had[x] = true
		}
		for _, x := range l.after {
			if !had[x] {
				d = append(d, l.what+" left behind: "+x)
			}
		}
	}
	return d
}

// TestPodWithLocalVolume runs the whole path a runtime uses: a pod from a
// locally imported image, scheduled with a PVC bound to a static local PV,
// reached over HTTP at its pod IP, its logs read through the apiserver and
// the kubelet; then everything is deleted and the host is compared with how
// it was before the bed started.
func TestPodWithLocalVolume(t *testing.T) {
	before := snapshotHost(t)
	c := Start(t)
	t.Logf("bed start (first in this process): %s", c.StartDuration.Round(time.Millisecond))
	for _, n := range kubeletSysctls {
		if v, _ := readSysctl(n); v != before.sysctls[n] {
			t.Logf("the kubelet changed %s: %s → %s", n, before.sysctls[n], v)
		}
	}
	cs := c.Clientset()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ns := c.Namespace(t)
	img := c.BusyboxImage(t)

	// A static local PV and a no-provisioner class binding on first use: the
	// scheduler picks the PV by its node affinity and the controller-manager's
	// PV controller completes the bind. Nothing external provisions, and no
	// hostPath provisioner writes outside the test's directory.
	hostDir := t.TempDir()
	sc := "kt-local-" + randHex(3)
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	if _, err := cs.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: sc},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: &wait,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create storage class: %v", err)
	}
	defer cs.StorageV1().StorageClasses().Delete(context.WithoutCancel(ctx), sc, metav1.DeleteOptions{})
	size := resource.MustParse("64Mi")
	pvName := sc + "-pv"
	if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              sc,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: hostDir}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{NodeName}}},
			}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pv: %v", err)
	}
	defer cs.CoreV1().PersistentVolumes().Delete(context.WithoutCancel(ctx), pvName, metav1.DeleteOptions{})
	if _, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pvc: %v", err)
	}

	token := randHex(8)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name:            "web",
				Image:           img,
				ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c",
					"echo " + token + " > /data/out.txt && echo started-" + token + " && exec httpd -f -p 8080 -h /data"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"},
			}}},
		},
	}
	runPod, schedToRun := createAndWaitRunning(t, ctx, c, ns, pod)
	t.Logf("pod scheduled→running: %s", schedToRun.Round(time.Millisecond))
	if runPod.Spec.NodeName != NodeName {
		t.Errorf("pod on node %q, want %q", runPod.Spec.NodeName, NodeName)
	}
	pvc, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil || pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName != pvName {
		t.Errorf("pvc = %v %+v, want bound to %s", err, pvc.Status, pvName)
	}

	// HTTP to the pod IP, from the bed's network namespace.
	podIP := runPod.Status.PodIP
	if !strings.HasPrefix(podIP, "10.244.0.") {
		t.Errorf("pod IP %s outside %s", podIP, PodSubnet)
	}
	var body []byte
	err = c.poll(ctx, "pod HTTP", func() (bool, error) {
		resp, err := c.HTTPClient().Get("http://" + net.JoinHostPort(podIP, "8080") + "/out.txt")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		return resp.StatusCode == 200, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(body)) != token {
		t.Errorf("pod served %q, want %q", body, token)
	}
	// The file is in the PV's directory on the host.
	if b, err := os.ReadFile(filepath.Join(hostDir, "out.txt")); err != nil || strings.TrimSpace(string(b)) != token {
		t.Errorf("PV file = %q, %v; want %q", b, err, token)
	}
	// Logs go apiserver → kubelet (client cert, webhook authz) → containerd.
	logs, err := cs.CoreV1().Pods(ns).GetLogs("web", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || !strings.Contains(string(logs), "started-"+token) {
		t.Errorf("pod logs = %q, %v", logs, err)
	}

	podUID := string(runPod.UID)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	if err := c.poll(ctx, "pod gone", func() (bool, error) {
		_, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	}); err != nil {
		t.Fatal(err)
	}
	// The pod's cgroups and its veth on the bridge are gone with it.
	if err := c.poll(ctx, "pod cgroups and veth gone", func() (bool, error) {
		for _, d := range cgroupDirs(c.cgroupRoot) {
			if strings.Contains(d, podUID) {
				return false, fmt.Errorf("cgroup %s remains", d)
			}
		}
		links, err := c.linksInside()
		if err != nil {
			return false, err
		}
		for _, l := range links {
			if l != "lo" && l != bridgeName {
				return false, fmt.Errorf("link %s remains in the bed's namespace", l)
			}
		}
		return true, nil
	}); err != nil {
		t.Error(err)
	}
	if err := cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete pvc: %v", err)
	}

	if err := c.DeleteNamespace(ctx, ns); err != nil {
		t.Error(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// A dial after (or racing) the teardown is refused, never made from a
	// closed or reused namespace handle.
	if _, err := c.DialContext(ctx, "tcp", NodeIP+":6443"); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("dial into a stopped bed: %v", err)
	}
	after := snapshotHost(t)
	if _, err := os.Stat(sysctlStatePath); err == nil {
		// Another test binary's bed runs: the tunables and their record stay
		// until the last bed stops.
		t.Log("another bed is running: the kernel tunables are not compared")
		after.sysctls = before.sysctls
		kept := after.paths[:0]
		for _, p := range after.paths {
			if p != sysctlLockPath && p != sysctlStatePath {
				kept = append(kept, p)
			}
		}
		after.paths = kept
	}
	for _, d := range before.diff(after) {
		t.Error(d)
	}
	for _, d := range c.leftovers() {
		t.Error(d)
	}
}

// createAndWaitRunning creates pod and watches it until it runs with an IP,
// returning it and the time from the scheduler's binding (the first event
// with a node name) to Running as the watch saw them.
func createAndWaitRunning(tb testing.TB, ctx context.Context, c *Cluster, ns string, pod *corev1.Pod) (*corev1.Pod, time.Duration) {
	tb.Helper()
	cs := c.Clientset()
	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod.Name})
	if err != nil {
		tb.Fatalf("watch pods: %v", err)
	}
	defer w.Stop()
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create pod: %v", err)
	}
	var scheduled time.Time
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				tb.Fatal("pod watch closed")
			}
			if ev.Type == watch.Error {
				tb.Fatalf("pod watch: %v", ev.Object)
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			if scheduled.IsZero() && p.Spec.NodeName != "" {
				scheduled = time.Now()
			}
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				return p, time.Since(scheduled)
			}
			if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
				tb.Fatalf("pod ended: %s %s", p.Status.Phase, p.Status.Message)
			}
		case <-ctx.Done():
			p, _ := cs.CoreV1().Pods(ns).Get(context.WithoutCancel(ctx), pod.Name, metav1.GetOptions{})
			tb.Log(c.logTails())
			tb.Fatalf("pod not running: %+v", p.Status)
		}
	}
}

// BenchmarkBed reports a bed's start to node Ready, the first in the process
// (binaries not yet in the page cache after a build or a reboot) and a
// second one, and a pod's scheduled→running time on the second bed.
func BenchmarkBed(b *testing.B) {
	var first, second, pod time.Duration
	for range b.N {
		c1 := Start(b)
		first += c1.StartDuration
		if err := c1.Stop(); err != nil {
			b.Fatal(err)
		}
		c2 := Start(b)
		second += c2.StartDuration
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		ns := c2.Namespace(b)
		_, d := createAndWaitRunning(b, ctx, c2, ns, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "sleep"},
			Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{Name: "sleep", Image: c2.BusyboxImage(b), ImagePullPolicy: corev1.PullNever,
					Command: []string{"sleep", "3600"}}},
			},
		})
		cancel()
		pod += d
		if err := c2.DeleteNamespace(context.Background(), ns); err != nil {
			b.Fatal(err)
		}
		if err := c2.Stop(); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(first.Seconds()/n, "first-start-s")
	b.ReportMetric(second.Seconds()/n, "second-start-s")
	b.ReportMetric(second.Seconds()/first.Seconds(), "second/first")
	b.ReportMetric(float64(pod.Milliseconds())/n, "pod-sched-to-running-ms")
}

// leftovers lists what of this bed is still on the host after Stop: its
// cgroups, its processes (by mount namespace or by the bed's directory on
// their command line) and host mounts under its directory. Other beds (other
// test binaries run in parallel) are not this bed's and not counted.
func (c *Cluster) leftovers() []string {
	var l []string
	for _, d := range cgroupDirs(c.cgroupRoot) {
		l = append(l, "cgroup left behind: "+d)
	}
	for _, pid := range pidsWhere(func(pid int) bool {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == c.mntNS {
			return true
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return err == nil && bytes.Contains(cmd, []byte(c.dir))
	}) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		l = append(l, fmt.Sprintf("process left behind: %d %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], c.dir) {
			l = append(l, "mount left behind: "+f[4])
		}
	}
	if _, err := os.Stat(c.dir); err == nil {
		l = append(l, "bed dir left behind: "+c.dir)
	}
	return l
}

func (c *Cluster) linksInside() ([]string, error) {
	h, err := netlink.NewHandleAt(c.netNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names, nil
}

// TestSharedBed runs a pod to completion on the package's shared bed, the
// way runtime tests use it, and checks Shared hands out one bed.
func TestSharedBed(t *testing.T) {
	c := Shared(t)
	t.Logf("shared bed start (after the private one): %s", c.StartDuration.Round(time.Millisecond))
	if Shared(t) != c {
		t.Error("Shared started a second bed")
	}
	cs := c.Clientset()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := c.Namespace(t)
	img := c.BusyboxImage(t)
	token := randHex(8)
	_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "once"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "once", Image: img, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sh", "-c", "echo done-" + token},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	if err := c.poll(ctx, "pod succeeded", func() (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "once", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod failed: %+v", p.Status)
		}
		return p.Status.Phase == corev1.PodSucceeded, nil
	}); err != nil {
		t.Fatal(err)
	}
	logs, err := cs.CoreV1().Pods(ns).GetLogs("once", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || strings.TrimSpace(string(logs)) != "done-"+token {
		t.Errorf("logs = %q, %v", logs, err)
	}
	if b, err := os.ReadFile(c.Kubeconfig()); err != nil || !bytes.Contains(b, []byte(c.Config().Host)) {
		t.Errorf("kubeconfig does not name %s: %v", c.Config().Host, err)
	}
}

func TestMain(m *testing.M) { Main(m) }

// TestBedDoesNotPinHostMounts: a bed's mount namespace is a copy of the
// host's, and with private propagation it would keep a loop-mounted disk and
// a network namespace that existed at its start for its whole life (the host
// could unmount the disk but never free the loop device, which is what made
// sandbox tests fail beside a running bed). The holder drops such copies.
func TestBedDoesNotPinHostMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and network namespaces")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "disk.ext4"), filepath.Join(dir, "mnt")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("truncate", "-s", "16M", img)
	run("mkfs.ext4", "-q", "-F", img)
	loop := run("losetup", "-f", "--show", img)
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run("mount", loop, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	netns := "kt-pin-" + randHex(3)
	run("ip", "netns", "add", netns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", netns).Run() })

	c := Start(t)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mounts", c.nsPID))
	if err != nil {
		t.Fatal(err)
	}
	mounts := string(b)
	for _, pinned := range []string{loop + " ", mnt + " ", "/run/netns/" + netns + " "} {
		if strings.Contains(mounts, pinned) {
			t.Errorf("the bed's mount namespace holds %q, so the host cannot release it:\n%s", strings.TrimSpace(pinned), mounts)
		}
	}
}
