package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"atelier/internal/ids"
)

// The policy check's probe Pods: role, id prefix and the exit codes of
// `atelier-agent netcheck dial` (cmd/atelier-agent/netcheck.go).
const (
	RoleProbe        = "cni-probe"
	probePrefix      = "cnichk"
	probeConnected   = 10
	probeBlocked     = 11
	probeLifeSeconds = 600
)

// ProbeName is the name of a policy-check Pod.
func ProbeName(id string) string { return "atelier-probe-" + id }

// CheckPolicyEnforcement proves by traffic whether the cluster's network
// enforces the NetworkPolicies the runtime relies on to keep one sandbox's
// Pod (code-server, OpenCode, noVNC) from another's. It applies the
// sandbox policy for two throwaway ids, runs a listener Pod as the one and
// a dialer Pod as the other, and reads whether the dialer reached the
// listener: connected means the policies are not enforced. An error is an
// unanswered check, never an answer. Everything made is removed after.
func (d *Driver) CheckPolicyEnforcement(ctx context.Context) (enforced bool, err error) {
	img, err := d.probeImage()
	if err != nil {
		return false, err
	}
	lid, did := probeID(), probeID()
	d.mu.Lock()
	d.probing[lid], d.probing[did] = true, true
	d.mu.Unlock()
	defer func() {
		if cerr := d.removeProbe(context.WithoutCancel(ctx), lid, did); cerr != nil {
			d.log.Warn("policy check: leftovers not removed (the reconciler removes them)", "err", cerr)
		}
		d.mu.Lock()
		delete(d.probing, lid)
		delete(d.probing, did)
		d.mu.Unlock()
	}()
	for _, id := range []string{lid, did} {
		if err := d.ensurePolicy(ctx, id, ""); err != nil {
			return false, fmt.Errorf("policy check: %w", err)
		}
	}
	port := strconv.Itoa(d.opts.agentPort())
	l, err := d.startPod(ctx, d.opts.buildProbePod(lid, img.Ref, "listen", ":"+port, "--for", strconv.Itoa(probeLifeSeconds)+"s"),
		func(p *corev1.Pod) (bool, error) {
			switch p.Status.Phase {
			case corev1.PodRunning:
				return p.Status.PodIP != "", nil
			case corev1.PodFailed, corev1.PodSucceeded:
				return false, fmt.Errorf("pod %s ended: %s", p.Name, podProblem(p))
			}
			return false, stuck(p)
		})
	if err != nil {
		return false, fmt.Errorf("policy check: listener: %w", err)
	}
	target := net.JoinHostPort(l.Status.PodIP, port)
	// Several attempts over seconds: the listener may bind after its Pod
	// runs, and any one connection is the answer.
	p, err := d.startPod(ctx, d.opts.buildProbePod(did, img.Ref, "dial", target, "--timeout", "3s", "--attempts", "5", "--interval", "1s"),
		func(p *corev1.Pod) (bool, error) {
			switch p.Status.Phase {
			case corev1.PodSucceeded, corev1.PodFailed:
				if startFailed(p) {
					return false, fmt.Errorf("pod %s ended: %s", p.Name, podProblem(p))
				}
				return true, nil
			}
			return false, stuck(p)
		})
	if err != nil {
		return false, fmt.Errorf("policy check: dialer: %w", err)
	}
	code, ok := exitCode(p)
	switch {
	case ok && code == probeConnected:
		d.log.Warn("policy check: a sandbox's Pod reached another's: the cluster's network does not enforce NetworkPolicies", "target", target)
		return false, nil
	case ok && code == probeBlocked:
		return true, nil
	}
	return false, fmt.Errorf("policy check: dialer gave no answer (an image whose agent has no netcheck?): %s", podProblem(p))
}

// probeImage is the default image's: the probes run its own agent.
func (d *Driver) probeImage() (Image, error) {
	name := d.opts.DefaultImage
	if name == "" {
		names := make([]string, 0, len(d.opts.Images))
		for n := range d.opts.Images {
			names = append(names, n)
		}
		slices.Sort(names)
		if len(names) == 0 {
			return Image{}, errors.New("policy check: sandbox.kubernetes.images is empty: no image to probe with")
		}
		name = names[0]
	}
	img, err := d.image(name)
	if err != nil {
		return Image{}, fmt.Errorf("policy check: %w", err)
	}
	return img, nil
}

func probeID() string {
	return probePrefix + ids.New(ids.SandboxIDLen-len(probePrefix))
}

// IsProbe reports whether id is a policy check's: a leftover of one the
// reconciler removes like any id of no sandbox.
func IsProbe(id string) bool { return strings.HasPrefix(id, probePrefix) && ids.ValidSandboxID(id) }

// removeProbe deletes the probe Pods, then the policies (a Pod never runs
// unconfined).
func (d *Driver) removeProbe(ctx context.Context, lids ...string) error {
	var errs []error
	for _, id := range lids {
		errs = append(errs, d.deletePod(ctx, ProbeName(id)))
	}
	for _, id := range lids {
		errs = append(errs, ignoreGone(d.cs.NetworkingV1().NetworkPolicies(d.opts.Namespace).Delete(ctx, PolicyName(id), metav1.DeleteOptions{})))
	}
	return errors.Join(errs...)
}

func exitCode(p *corev1.Pod) (int32, bool) {
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			return t.ExitCode, true
		}
	}
	return 0, false
}

// buildProbePod runs `atelier-agent netcheck` as sandbox id would run:
// under its policy (the labels), with a sandbox's security context, small,
// with no disk, never restarted and ended by the cluster after
// probeLifeSeconds if the manager never deletes it.
func (o *Options) buildProbePod(id, ref string, args ...string) *corev1.Pod {
	spec := o.podSpecBase()
	spec.ActiveDeadlineSeconds = new(int64(probeLifeSeconds))
	req := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")}
	limit := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("200m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	spec.Containers = []corev1.Container{{
		Name:            "netcheck",
		Image:           ref,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         append([]string{o.agentPath(), "netcheck"}, args...),
		Resources:       corev1.ResourceRequirements{Requests: req, Limits: limit},
		SecurityContext: securityContext(),
	}}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: ProbeName(id), Namespace: o.Namespace, Labels: labels(id, "", RoleProbe)},
		Spec:       spec,
	}
}
