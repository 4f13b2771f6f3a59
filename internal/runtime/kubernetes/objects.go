// Package kubernetes is the `kubernetes` runtime: a sandbox is a Pod in one
// namespace, its disk a PersistentVolumeClaim, its agent reached over the
// pod network with mutual TLS (internal/agentpki), its network confined by
// a NetworkPolicy. Every object carries the sandbox's id as a label, which
// is how destroy and the reconciler find them.
package kubernetes

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"atelier/internal/agentpki"
	"atelier/internal/bootcontract"
	"atelier/internal/sandbox"
)

// Labels and annotations Atelier puts on what it makes.
const (
	LabelManaged   = "app.kubernetes.io/managed-by"
	ManagedBy      = "atelier"
	LabelSandbox   = "atelier.dev/sandbox-id"
	LabelOwner     = "atelier.dev/owner"
	LabelRole      = "atelier.dev/role"
	RoleSandbox    = "sandbox"
	RoleFill       = "fill"
	RoleManager    = "manager"
	AnnotFilled    = "atelier.dev/filled"
	AnnotImage     = "atelier.dev/image"
	containerName  = "sandbox"
	tlsMount       = "/atelier-agent/tls"
	fillMount      = "/atelier-disk"
	diskVolume     = "disk"
	tlsVolume      = "agent-tls"
	snapshotGroup  = "snapshot.storage.k8s.io"
	stopGraceSecs  = 10
	defaultAgentTo = 9998
)

// diskDirs are the top-level directories of the image's root the sandbox's
// Pod mounts from its disk: what a user installs or writes there survives
// stop and start. The rest of / is the image's layer (usr-merged images
// keep bin, lib and sbin as links into usr).
var diskDirs = []string{"etc", "home", "opt", "root", "srv", "usr", "var"}

// capabilities are the container runtime's (Docker's default 14) less
// NET_RAW, named as Kubernetes names them: the Pod Security "baseline"
// level admits exactly these. Ping works without NET_RAW through ICMP
// datagram sockets (the ping_group_range sysctl below), as in a container
// sandbox's user namespace.
var capabilities = []corev1.Capability{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

// sysctls are the container runtime's network sysctls, which Kubernetes
// counts as safe (namespaced to the Pod): ICMP datagram sockets for every
// user, ports below 1024 without privilege.
var sysctls = []corev1.Sysctl{
	{Name: "net.ipv4.ping_group_range", Value: "0 2147483647"},
	{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"},
}

// Object names of a sandbox; ids are 12 characters of [a-z0-9], so every
// name is a valid DNS label.
func PodName(id string) string    { return "atelier-sb-" + id }
func FillName(id string) string   { return "atelier-fill-" + id }
func ClaimName(id string) string  { return "atelier-disk-" + id }
func SecretName(id string) string { return "atelier-agent-" + id }
func PolicyName(id string) string { return "atelier-sb-" + id }

// Image is an Atelier image as the cluster has it.
type Image struct {
	// Ref is the OCI image reference the Pod runs.
	Ref string
	// Snapshot names a VolumeSnapshot holding the image's root, made by a
	// CSI driver: disks are restored from it instead of copied.
	Snapshot string
}

var globalUnicast = netip.MustParsePrefix("2000::/3")

var labelValueRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// ownerLabel is the owner id as a label value; an id a label cannot hold
// is left out rather than mangled into something that looks like another.
func ownerLabel(owner string) (string, bool) {
	return owner, owner != "" && labelValueRe.MatchString(owner)
}

func labels(id, owner, role string) map[string]string {
	l := map[string]string{LabelManaged: ManagedBy, LabelSandbox: id, LabelRole: role}
	if v, ok := ownerLabel(owner); ok {
		l[LabelOwner] = v
	}
	return l
}

// Selector selects everything Atelier made for sandbox id.
func Selector(id string) string {
	return LabelManaged + "=" + ManagedBy + "," + LabelSandbox + "=" + id
}

// managedSelector selects everything Atelier made in the namespace.
const managedSelector = LabelManaged + "=" + ManagedBy

func securityContext() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		Privileged:               new(false),
		AllowPrivilegeEscalation: new(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: capabilities},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func (o *Options) podSpecBase() corev1.PodSpec {
	spec := corev1.PodSpec{
		// A sandbox talks to nothing in the cluster's API and must not learn
		// its Services from the environment.
		AutomountServiceAccountToken:  new(false),
		EnableServiceLinks:            new(false),
		RestartPolicy:                 corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: new(int64(stopGraceSecs)),
		SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			Sysctls:        sysctls,
		},
	}
	if o.RuntimeClassName != "" {
		spec.RuntimeClassName = new(o.RuntimeClassName)
	}
	return spec
}

// buildPod is sandbox inst's Pod: the agent's init as PID 1 (it handles
// SIGTERM, so deletion takes as long as the agent's shutdown, not the whole
// grace), serving the API over mutual TLS on the agent port; CPU and memory
// requested and limited alike; the disk's directories mounted over the
// image's.
func (o *Options) buildPod(inst sandbox.Instance, img Image) *corev1.Pod {
	id := inst.ID
	cpu := resource.MustParse(strconv.Itoa(max(inst.Vcpus, 1)))
	mem := resource.MustParse(strconv.Itoa(max(inst.MemoryMB, 64)) + "Mi")
	mounts := []corev1.VolumeMount{{Name: tlsVolume, MountPath: tlsMount, ReadOnly: true}}
	for _, d := range diskDirs {
		mounts = append(mounts, corev1.VolumeMount{Name: diskVolume, MountPath: "/" + d, SubPath: d})
	}
	spec := o.podSpecBase()
	spec.Hostname = bootcontract.Hostname(id)
	spec.Containers = []corev1.Container{{
		Name:            containerName,
		Image:           img.Ref,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{o.agentPath(), "init", "--kernel-cmdline=false", "--"},
		Args: []string{"--listen-tls", ":" + strconv.Itoa(o.agentPort()), "--tls-dir", tlsMount,
			"--vsock-port", "0", "--sandbox-id", id},
		Env: []corev1.EnvVar{
			{Name: "PATH", Value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			{Name: "HOME", Value: "/root"},
			{Name: "TERM", Value: "xterm-256color"},
			{Name: "LANG", Value: "C.UTF-8"},
			{Name: "ATELIER_SANDBOX_ID", Value: id},
		},
		Ports: []corev1.ContainerPort{{Name: "agent", ContainerPort: int32(o.agentPort()), Protocol: corev1.ProtocolTCP}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem},
		},
		SecurityContext: securityContext(),
		VolumeMounts:    mounts,
	}}
	spec.Volumes = []corev1.Volume{
		{Name: diskVolume, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: ClaimName(id)}}},
		// The sandbox's own credential only: one Secret per sandbox.
		{Name: tlsVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: SecretName(id), DefaultMode: new(int32(0o400))}}},
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: PodName(id), Namespace: o.Namespace, Labels: labels(id, inst.Owner, RoleSandbox)},
		Spec:       spec,
	}
}

// buildFillPod copies the image's root onto a new disk with the image's own
// agent (copy-rootfs), where no VolumeSnapshot of the image exists.
func (o *Options) buildFillPod(id, owner string, img Image) *corev1.Pod {
	spec := o.podSpecBase()
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("512Mi")}
	spec.Containers = []corev1.Container{{
		Name:            "fill",
		Image:           img.Ref,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{o.agentPath(), "copy-rootfs", fillMount},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   res,
		},
		SecurityContext: securityContext(),
		VolumeMounts:    []corev1.VolumeMount{{Name: diskVolume, MountPath: fillMount}},
	}}
	spec.Volumes = []corev1.Volume{{Name: diskVolume, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: ClaimName(id)}}}}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: FillName(id), Namespace: o.Namespace, Labels: labels(id, owner, RoleFill)},
		Spec:       spec,
	}
}

// buildClaim is the sandbox's disk: from the image's VolumeSnapshot where
// there is one (then it is whole at once), else empty until filled.
func (o *Options) buildClaim(id, owner, image string, img Image) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: ClaimName(id), Namespace: o.Namespace, Labels: labels(id, owner, RoleSandbox),
			Annotations: map[string]string{AnnotImage: image}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: *resource.NewQuantity(o.DiskBytes, resource.BinarySI)}},
		},
	}
	if o.StorageClass != "" {
		c.Spec.StorageClassName = new(o.StorageClass)
	}
	if img.Snapshot != "" {
		c.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: new(snapshotGroup), Kind: "VolumeSnapshot", Name: img.Snapshot}
		c.Annotations[AnnotFilled] = "snapshot"
	}
	return c
}

// buildSecret is sandbox id's agent credential: its own server certificate
// and key, and the CA that must have signed the manager's client
// certificate. Nothing else: not the CA's key, not another sandbox's.
func buildSecret(ns, id, owner string, caPEM, certPEM, keyPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretName(id), Namespace: ns, Labels: labels(id, owner, RoleSandbox)},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{agentpki.CAFile: caPEM, agentpki.CertFile: certPEM, agentpki.KeyFile: keyPEM},
	}
}

// buildPolicy is the host firewall's rules for sandbox id's pods.
// Ingress: only from the manager's pods, which hold the API's agent client
// (the agent port, mutual TLS) and the edge (the dev servers it routes to).
// Egress: the cluster's DNS, the npm cache on the manager's pods, the
// operator's DNS servers on port 53, the operator's allowed prefixes, and
// the internet except every prefix the host firewall blocks plus the
// cluster's own (pods, Services, nodes, metadata): so no other sandbox, no
// cluster-internal service, no metadata address.
func (o *Options) buildPolicy(id, owner string) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	dns := intstr.FromInt32(53)
	manager := &metav1.LabelSelector{MatchLabels: map[string]string{LabelRole: RoleManager}}
	egress := []networkingv1.NetworkPolicyEgressRule{{
		To: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
		}},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}},
	}}
	if o.RegistryPort > 0 {
		p := intstr.FromInt32(int32(o.RegistryPort))
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{
			To: []networkingv1.NetworkPolicyPeer{{PodSelector: manager}}, Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}})
	}
	if len(o.DNSServers) > 0 {
		var to []networkingv1.NetworkPolicyPeer
		for _, s := range o.DNSServers {
			a := netip.MustParseAddr(s)
			to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(a, a.BitLen()).String()}})
		}
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{To: to,
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}}})
	}
	if len(o.EgressAllow) > 0 {
		var to []networkingv1.NetworkPolicyPeer
		for _, p := range o.EgressAllow {
			to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.String()}})
		}
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{To: to})
	}
	// An except must lie strictly inside its block (the API refuses the
	// policy otherwise); IPv6 outside global unicast is not allowed anyway.
	var v4, v6 []string
	for _, p := range o.EgressDeny {
		switch p = p.Masked(); {
		case p.Addr().Is4() && p.Bits() > 0:
			v4 = append(v4, p.String())
		case p.Addr().Is6() && p.Bits() > 3 && globalUnicast.Contains(p.Addr()):
			v6 = append(v6, p.String())
		}
	}
	egress = append(egress, networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: v4}},
		// Global unicast only: no unique-local (fd00:ec2::254, a cloud's
		// metadata) or link-local IPv6.
		{IPBlock: &networkingv1.IPBlock{CIDR: globalUnicast.String(), Except: v6}},
	}})
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: PolicyName(id), Namespace: o.Namespace, Labels: labels(id, owner, RoleSandbox)},
		Spec: networkingv1.NetworkPolicySpec{
			// The sandbox's Pod and its fill Pod alike.
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelManaged: ManagedBy, LabelSandbox: id}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: manager}}}},
			Egress:      egress,
		},
	}
}

// ParseImages reads sandbox.kubernetes.images entries ID=REFERENCE and
// sandbox.kubernetes.snapshots entries ID=VOLUMESNAPSHOT.
func ParseImages(images, snapshots []string) (map[string]Image, error) {
	out := map[string]Image{}
	for i, e := range images {
		id, ref, ok := strings.Cut(e, "=")
		if !ok || id == "" || ref == "" || strings.ContainsAny(e, " \t\n") {
			return nil, fmt.Errorf("sandbox.kubernetes.images entry %d %q: want IMAGE=REFERENCE (dev-base=registry.example/atelier/dev-base:1)", i, e)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("sandbox.kubernetes.images: image %q given twice", id)
		}
		out[id] = Image{Ref: ref}
	}
	for i, e := range snapshots {
		id, snap, ok := strings.Cut(e, "=")
		img, known := out[id]
		if !ok || !known || !labelValueRe.MatchString(snap) {
			return nil, fmt.Errorf("sandbox.kubernetes.snapshots entry %d %q: want IMAGE=VOLUMESNAPSHOT for an image of sandbox.kubernetes.images", i, e)
		}
		img.Snapshot = snap
		out[id] = img
	}
	return out, nil
}

func (o *Options) agentPort() int {
	if o.AgentPort > 0 {
		return o.AgentPort
	}
	return defaultAgentTo
}

func (o *Options) agentPath() string {
	if o.AgentPath != "" {
		return o.AgentPath
	}
	return bootcontract.InitPath
}
