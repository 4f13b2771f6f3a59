package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"atelier/internal/agent"
	"atelier/internal/agentpki"
	"atelier/internal/ids"
	"atelier/internal/sandbox"
	"atelier/internal/storage"
)

// Options configure the driver (sandbox.kubernetes.* in the config).
type Options struct {
	Namespace        string
	RuntimeClassName string
	// StorageClass of the disks; "" is the cluster's default class.
	StorageClass string
	// DiskBytes is the size of every sandbox's disk.
	DiskBytes int64
	// Images are the Atelier images the cluster can run, by image id.
	Images map[string]Image
	// DefaultImage is the image the policy check's probe Pods run; "":
	// the first of Images by name.
	DefaultImage string
	// AgentPort is the agent's TCP port in the Pod.
	AgentPort int
	// AgentPath is the agent inside the image (bootcontract.InitPath).
	AgentPath string
	// RegistryPort is the npm cache's port on the manager's pods (0: none).
	RegistryPort int
	// DNSServers the sandboxes may reach on port 53 besides the cluster's.
	DNSServers []string
	// EgressDeny are the prefixes sandboxes may not reach; EgressAllow
	// are exceptions to them.
	EgressDeny  []netip.Prefix
	EgressAllow []netip.Prefix
	// PodTimeout bounds how long a Pod may take to run (an image pull).
	PodTimeout time.Duration
	// Poll is how often a Pod's progress is read.
	Poll time.Duration
	// Snapshots is the client of the CSI snapshot API (prebuilds); nil:
	// no prebuilds. SnapshotClass is their VolumeSnapshotClass ("" the
	// default class).
	Snapshots     dynamic.Interface
	SnapshotClass string
	// Dial connects to a Pod IP; nil dials from this network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// CA issues the agents' certificates and the manager's.
	CA  *agentpki.CA
	Log *slog.Logger
	// Now is the clock certificate renewal reads; nil: time.Now.
	Now func() time.Time
}

// Driver is the runtime, the volumes and the inventory over one namespace.
type Driver struct {
	cs   kubernetes.Interface
	opts Options
	log  *slog.Logger

	mu  sync.Mutex
	ips map[string]string // sandbox id → its Pod's IP, as last read
	// probing are the ids of a policy check under way: List leaves them
	// out, so a reconciler pass does not remove them mid-check.
	probing map[string]bool
	// renewedAt is when Upkeep last looked at the agent certificates.
	renewedAt time.Time
}

var (
	_ sandbox.Runtime          = (*Driver)(nil)
	_ sandbox.Volumes          = (*Driver)(nil)
	_ sandbox.AgentRuntime     = (*Driver)(nil)
	_ sandbox.AddressedRuntime = (*Driver)(nil)
	_ sandbox.ImageSizer       = (*Driver)(nil)
)

// New returns a driver acting on cs in opts.Namespace.
func New(cs kubernetes.Interface, opts Options) (*Driver, error) {
	if !ids.ValidDNSLabel(opts.Namespace) {
		return nil, fmt.Errorf("sandbox.kubernetes.namespace %q: must be a DNS label", opts.Namespace)
	}
	if opts.CA == nil {
		return nil, errors.New("kubernetes runtime: no agent CA")
	}
	if opts.DiskBytes <= 0 {
		opts.DiskBytes = 20 << 30
	}
	if opts.PodTimeout <= 0 {
		opts.PodTimeout = 5 * time.Minute
	}
	if opts.Poll <= 0 {
		opts.Poll = 100 * time.Millisecond
	}
	if opts.EgressDeny == nil {
		opts.EgressDeny = DefaultEgressDeny()
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Driver{cs: cs, opts: opts, log: opts.Log.With("runtime", "kubernetes"), ips: map[string]string{}, probing: map[string]bool{}}, nil
}

func checkID(id string) error {
	if !ids.ValidSandboxID(id) {
		return fmt.Errorf("sandbox id %q: not a valid id", id)
	}
	return nil
}

func (d *Driver) image(name string) (Image, error) {
	img, ok := d.opts.Images[name]
	if !ok {
		return Image{}, fmt.Errorf("image %q: not in sandbox.kubernetes.images: %w", name, storage.ErrNotFound)
	}
	return img, nil
}

// ImageSize is the disk of every sandbox of a known image.
func (d *Driver) ImageSize(_ context.Context, image string) (int64, error) {
	if _, err := d.image(image); err != nil {
		return 0, err
	}
	return d.opts.DiskBytes, nil
}

// Boot issues the sandbox's agent credential (a fresh one at every boot:
// that is its rotation), applies its NetworkPolicy and runs its Pod on its
// disk, returning once the Pod runs with an address.
func (d *Driver) Boot(ctx context.Context, inst sandbox.Instance) error {
	id := inst.ID
	if err := checkID(id); err != nil {
		return err
	}
	pvc, err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Get(ctx, ClaimName(id), metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("boot %s: disk: %w", id, err)
	}
	if pvc.Annotations[AnnotFilled] == "" {
		return fmt.Errorf("boot %s: disk %s was never filled", id, pvc.Name)
	}
	img, err := d.image(pvc.Annotations[AnnotImage])
	if err != nil {
		return fmt.Errorf("boot %s: %w", id, err)
	}
	// The volume step does not know the owner; the first boot labels the
	// disk with it, so an operator can select a user's claims as they do
	// the Pods.
	if v, ok := ownerLabel(inst.Owner); ok && pvc.Labels[LabelOwner] != v {
		patch := []byte(`{"metadata":{"labels":{"` + LabelOwner + `":"` + v + `"}}}`)
		if _, err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("boot %s: label disk with its owner: %w", id, err)
		}
	}
	// A running sandbox keeps its Pod and its credential untouched.
	if _, err := d.cs.CoreV1().Pods(d.opts.Namespace).Get(ctx, PodName(id), metav1.GetOptions{}); err == nil {
		return fmt.Errorf("boot %s: pod %s exists: already running", id, PodName(id))
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("boot %s: %w", id, err)
	}
	if err := d.ensurePolicy(ctx, id, inst.Owner); err != nil {
		return err
	}
	certPEM, keyPEM, err := d.opts.CA.IssueAgentAt(id, d.now())
	if err != nil {
		return err
	}
	sec := buildSecret(d.opts.Namespace, id, inst.Owner, d.opts.CA.CertPEM(), certPEM, keyPEM)
	if err := apply(ctx, d.cs.CoreV1().Secrets(d.opts.Namespace), sec); err != nil {
		return fmt.Errorf("boot %s: agent credential: %w", id, err)
	}
	got, err := d.startPod(ctx, d.opts.buildPod(inst, img), func(p *corev1.Pod) (bool, error) {
		switch p.Status.Phase {
		case corev1.PodRunning:
			return p.Status.PodIP != "", nil
		case corev1.PodFailed, corev1.PodSucceeded:
			return false, fmt.Errorf("pod %s ended: %s", p.Name, podProblem(p))
		}
		return false, stuck(p)
	})
	if err != nil {
		return fmt.Errorf("boot %s: %w", id, err)
	}
	d.mu.Lock()
	d.ips[id] = got.Status.PodIP
	d.mu.Unlock()
	d.log.Info("sandbox pod running", "sandbox_id", id, "pod_ip", got.Status.PodIP, "node", got.Spec.NodeName)
	return nil
}

// Address is the sandbox's Pod IP.
func (d *Driver) Address(ctx context.Context, id string) (string, error) {
	d.mu.Lock()
	ip := d.ips[id]
	d.mu.Unlock()
	if ip != "" {
		return ip, nil
	}
	p, err := d.cs.CoreV1().Pods(d.opts.Namespace).Get(ctx, PodName(id), metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("address of %s: %w", id, err)
	}
	if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
		return "", fmt.Errorf("address of %s: pod %s has no address (%s)", id, p.Name, p.Status.Phase)
	}
	d.mu.Lock()
	d.ips[id] = p.Status.PodIP
	d.mu.Unlock()
	return p.Status.PodIP, nil
}

// AgentDialer reaches the sandbox's agent at its Pod IP with mutual TLS,
// accepting only the certificate issued for this sandbox. A failed dial
// forgets the address, so a Pod replaced since is looked up again.
func (d *Driver) AgentDialer(id string) agent.Dialer {
	inner := agent.TLSDialer(func(ctx context.Context) (string, error) {
		ip, err := d.Address(ctx, id)
		if err != nil {
			return "", err
		}
		return net.JoinHostPort(ip, strconv.Itoa(d.opts.agentPort())), nil
	}, d.opts.CA.ClientConfig(id), d.opts.Dial)
	return func(ctx context.Context) (net.Conn, error) {
		c, err := inner(ctx)
		if err != nil {
			d.forget(id)
		}
		return c, err
	}
}

func (d *Driver) forget(id string) {
	d.mu.Lock()
	delete(d.ips, id)
	d.mu.Unlock()
}

// Stop deletes the sandbox's Pod and its credential, waiting until the Pod
// is gone (so a start's new Pod can take its name and disk); the disk and
// the policy stay.
func (d *Driver) Stop(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	d.forget(id)
	if err := d.deletePod(ctx, PodName(id)); err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	err := d.cs.CoreV1().Secrets(d.opts.Namespace).Delete(ctx, SecretName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("stop %s: delete agent credential: %w", id, err)
	}
	return nil
}

// Destroy removes everything labelled with the sandbox's id but its disk
// (Volumes.Delete's): Pods, Secrets, NetworkPolicies.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := d.Stop(ctx, id); err != nil {
		return err
	}
	ns, sel := d.opts.Namespace, metav1.ListOptions{LabelSelector: Selector(id)}
	var errs []error
	pods, err := d.cs.CoreV1().Pods(ns).List(ctx, sel)
	errs = append(errs, err)
	if err == nil {
		for _, p := range pods.Items {
			errs = append(errs, d.deletePod(ctx, p.Name))
		}
	}
	secs, err := d.cs.CoreV1().Secrets(ns).List(ctx, sel)
	errs = append(errs, err)
	if err == nil {
		for _, s := range secs.Items {
			errs = append(errs, ignoreGone(d.cs.CoreV1().Secrets(ns).Delete(ctx, s.Name, metav1.DeleteOptions{})))
		}
	}
	pols, err := d.cs.NetworkingV1().NetworkPolicies(ns).List(ctx, sel)
	errs = append(errs, err)
	if err == nil {
		for _, p := range pols.Items {
			errs = append(errs, ignoreGone(d.cs.NetworkingV1().NetworkPolicies(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	return nil
}

// Alive reports whether the sandbox's Pod exists and has not ended.
func (d *Driver) Alive(ctx context.Context, id string) (bool, error) {
	p, err := d.cs.CoreV1().Pods(d.opts.Namespace).Get(ctx, PodName(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("alive %s: %w", id, err)
	}
	switch {
	case p.DeletionTimestamp != nil, p.Status.Phase == corev1.PodFailed, p.Status.Phase == corev1.PodSucceeded:
		return false, nil
	}
	return true, nil
}

// List is the reconciler's inventory of runtimes: the ids of every Pod,
// Secret and NetworkPolicy Atelier labelled, so an orphan of any kind is
// found and Destroy removes all of them. A policy check's probes count as
// orphans once the check is over (a manager that died mid-check leaves
// them), not while it runs.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	ns, sel := d.opts.Namespace, metav1.ListOptions{LabelSelector: managedSelector}
	var out []string
	d.mu.Lock()
	probing := maps.Clone(d.probing)
	d.mu.Unlock()
	add := func(l map[string]string) {
		if id := l[LabelSandbox]; ids.ValidSandboxID(id) && !probing[id] && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	pods, err := d.cs.CoreV1().Pods(ns).List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for _, p := range pods.Items {
		add(p.Labels)
	}
	secs, err := d.cs.CoreV1().Secrets(ns).List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	for _, s := range secs.Items {
		add(s.Labels)
	}
	pols, err := d.cs.NetworkingV1().NetworkPolicies(ns).List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("list network policies: %w", err)
	}
	for _, p := range pols.Items {
		add(p.Labels)
	}
	return out, nil
}

// Ping reads one Pod of the namespace: the API server answers and the
// manager may list there (the readiness check).
func (d *Driver) Ping(ctx context.Context) error {
	if _, err := d.cs.CoreV1().Pods(d.opts.Namespace).List(ctx, metav1.ListOptions{Limit: 1, LabelSelector: managedSelector}); err != nil {
		return fmt.Errorf("kubernetes API, namespace %s: %w", d.opts.Namespace, err)
	}
	return nil
}

// Volumes is the reconciler's inventory of disks.
func (d *Driver) Volumes(ctx context.Context) ([]sandbox.HostVolume, error) {
	l, err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: managedSelector})
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []sandbox.HostVolume
	for _, c := range l.Items {
		id := c.Labels[LabelSandbox]
		if !ids.ValidSandboxID(id) {
			continue
		}
		q := c.Spec.Resources.Requests[corev1.ResourceStorage]
		out = append(out, sandbox.HostVolume{ID: id, SizeBytes: q.Value()})
	}
	return out, nil
}

// Clone makes the sandbox's disk from the image: restored from the image's
// VolumeSnapshot, else filled by a Pod copying the image's root. A disk
// already filled is returned untouched (a retried create, a start).
func (d *Driver) Clone(ctx context.Context, image, id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	img, err := d.image(image)
	if err != nil {
		return "", err
	}
	claims := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace)
	pvc, err := claims.Get(ctx, ClaimName(id), metav1.GetOptions{})
	if err == nil && pvc.DeletionTimestamp != nil {
		// A disk being deleted (an undo, a replica's adopt step) still
		// answers, filled; booting on it would leave the Pod pending on a
		// claim that vanishes. A new disk is made once it is gone.
		if err := d.waitClaimGone(ctx, pvc.Name); err != nil {
			return "", fmt.Errorf("disk of %s: %w", id, err)
		}
		pvc, err = claims.Get(ctx, ClaimName(id), metav1.GetOptions{})
	}
	if apierrors.IsNotFound(err) {
		pvc, err = claims.Create(ctx, d.opts.buildClaim(id, "", image, img), metav1.CreateOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("disk of %s: %w", id, err)
	}
	if pvc.Annotations[AnnotFilled] != "" {
		return pvc.Name, nil
	}
	// The fill Pod is confined like the sandbox (it runs the image).
	if err := d.ensurePolicy(ctx, id, pvc.Labels[LabelOwner]); err != nil {
		return "", err
	}
	if err := d.fill(ctx, id, img); err != nil {
		return "", fmt.Errorf("fill disk of %s: %w", id, err)
	}
	// A merge patch: the volume controllers update the claim meanwhile.
	patch := []byte(`{"metadata":{"annotations":{"` + AnnotFilled + `":"copy"}}}`)
	if _, err := claims.Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return "", fmt.Errorf("disk of %s: mark filled: %w", id, err)
	}
	return pvc.Name, nil
}

func (d *Driver) fill(ctx context.Context, id string, img Image) error {
	// A fill a crash interrupted starts over: nothing of the user's is on
	// a disk never marked filled.
	if err := d.deletePod(ctx, FillName(id)); err != nil {
		return err
	}
	_, err := d.startPod(ctx, d.opts.buildFillPod(id, "", img), func(p *corev1.Pod) (bool, error) {
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return true, nil
		case corev1.PodFailed:
			return false, fmt.Errorf("fill pod failed: %s", podProblem(p))
		}
		return false, stuck(p)
	})
	// Gone before the sandbox's Pod takes the (read-write-once) disk.
	return errors.Join(err, d.deletePod(context.WithoutCancel(ctx), FillName(id)))
}

// Delete removes the sandbox's disk and a fill Pod that may hold it, and
// waits until the claim is gone: until its protection finalizer is
// removed a deleted claim still answers, and a create run right after (a
// replica adopting a dead one's create undoes it, then creates again)
// would find it filled and boot on it.
func (d *Driver) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := d.deletePod(ctx, FillName(id)); err != nil {
		return err
	}
	err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Delete(ctx, ClaimName(id), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete disk of %s: %w", id, err)
	}
	if err := d.waitClaimGone(ctx, ClaimName(id)); err != nil {
		return fmt.Errorf("delete disk of %s: %w", id, err)
	}
	return nil
}

// waitClaimGone reads the claim until it is gone or PodTimeout passes (a
// Pod outside Atelier's still mounting it keeps it).
func (d *Driver) waitClaimGone(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.PodTimeout)
	defer cancel()
	t := time.NewTicker(d.opts.Poll)
	defer t.Stop()
	for {
		_, err := d.cs.CoreV1().PersistentVolumeClaims(d.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("read claim %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("claim %s not gone: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

func (d *Driver) ensurePolicy(ctx context.Context, id, owner string) error {
	if err := apply(ctx, d.cs.NetworkingV1().NetworkPolicies(d.opts.Namespace), d.opts.buildPolicy(id, owner)); err != nil {
		return fmt.Errorf("network policy of %s: %w", id, err)
	}
	return nil
}

// deletePod deletes a Pod and waits until it is gone; an absent Pod is
// success.
func (d *Driver) deletePod(ctx context.Context, name string) error {
	pods := d.cs.CoreV1().Pods(d.opts.Namespace)
	err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(stopGraceSecs))})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	t := time.NewTicker(d.opts.Poll)
	defer t.Stop()
	for {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s not gone: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// waitPod reads the Pod until done says so, fails, or PodTimeout passes.
func (d *Driver) waitPod(ctx context.Context, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.PodTimeout)
	defer cancel()
	t := time.NewTicker(d.opts.Poll)
	defer t.Stop()
	var last *corev1.Pod
	for {
		p, err := d.cs.CoreV1().Pods(d.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			last = p
			ok, err := done(p)
			if err != nil {
				return p, err
			}
			if ok {
				return p, nil
			}
		case apierrors.IsNotFound(err):
			last = nil
		case ctx.Err() == nil:
			return nil, fmt.Errorf("read pod %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			// The last read says why it never got there (a read cut by the
			// deadline would not).
			what := "gone"
			if last != nil {
				what = podProblem(last)
			}
			return last, fmt.Errorf("pod %s: %w (%s)", name, ctx.Err(), what)
		case <-t.C:
		}
	}
}

// startPod creates pod and waits until done says it got there. A container
// the node failed to start (runc's "cannot start a stopped process" on a
// loaded node) is tried once more in a new Pod: with restartPolicy Never a
// transient runtime failure would otherwise fail the whole create.
func (d *Driver) startPod(ctx context.Context, pod *corev1.Pod, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	pods := d.cs.CoreV1().Pods(d.opts.Namespace)
	for attempt := 1; ; attempt++ {
		if _, err := pods.Create(ctx, pod.DeepCopy(), metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create pod %s: %w", pod.Name, err)
		}
		got, err := d.waitPod(ctx, pod.Name, done)
		if err == nil || attempt > 1 || got == nil || !startFailed(got) {
			return got, err
		}
		d.log.Warn("pod failed to start, trying a new one", "sandbox_id", pod.Labels[LabelSandbox], "pod", pod.Name, "problem", podProblem(got))
		if err := d.deletePod(ctx, pod.Name); err != nil {
			return got, err
		}
	}
}

// startFailed reports a container the runtime could not start (as opposed
// to one that ran and failed, or an image or spec problem).
func startFailed(p *corev1.Pod) bool {
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if t := cs.State.Terminated; t != nil && t.Reason == "StartError" {
			return true
		}
		if w := cs.State.Waiting; w != nil && w.Reason == "RunContainerError" {
			return true
		}
	}
	return false
}

// fatalWaiting are container states that never resolve by waiting.
var fatalWaiting = []string{"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}

func stuck(p *corev1.Pod) error {
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && slices.Contains(fatalWaiting, w.Reason) {
			return fmt.Errorf("pod %s: container %s: %s: %s", p.Name, cs.Name, w.Reason, w.Message)
		}
	}
	return nil
}

func podProblem(p *corev1.Pod) string {
	msg := string(p.Status.Phase)
	if p.Status.Reason != "" {
		msg += " " + p.Status.Reason
	}
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			msg += fmt.Sprintf("; %s exited %d %s %s", cs.Name, t.ExitCode, t.Reason, t.Message)
		}
		if w := cs.State.Waiting; w != nil {
			msg += fmt.Sprintf("; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			msg += "; " + c.Message
		}
	}
	return msg
}

func ignoreGone(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// applier is the part of a typed client apply needs.
type applier[T runtime.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// apply creates obj, or replaces the one of its name.
func apply[T runtime.Object](ctx context.Context, c applier[T], obj T) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
	}
	return err
}
