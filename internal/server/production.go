package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"atelier/internal/agent"
	"atelier/internal/config"
	"atelier/internal/network"
	"atelier/internal/runtime/container"
	"atelier/internal/runtime/firecracker"
	"atelier/internal/sandbox"
	"atelier/internal/storage"
	"atelier/internal/storage/pool"
)

// withAgent gives a runtime driver the sandbox.AgentRuntime method, and
// the readiness check of the host it needs.
type withAgent struct {
	sandbox.Runtime
	dial  func(id string) agent.Dialer
	check func(ctx context.Context) error
}

func (w withAgent) AgentDialer(id string) agent.Dialer { return w.dial(id) }

// Check is the runtime's part of /health/ready.
func (w withAgent) Check(ctx context.Context) error { return w.check(ctx) }

// hostDrivers builds the production drivers: the configured runtime, the
// host network (set up idempotently, re-adopting running sandboxes' links)
// and the volume driver the host provides.
func hostDrivers(ctx context.Context, cfg *config.Config, opts Options, log *slog.Logger) (sandbox.Drivers, sandbox.Inventory, hostReports, error) {
	var none sandbox.Drivers
	kind := network.LinkTAP
	if cfg.Sandbox.Runtime == "container" {
		kind = network.LinkVeth
	}
	nopts, err := network.OptionsFromConfig(cfg, kind)
	if err != nil {
		return none, sandbox.Inventory{}, hostReports{}, err
	}
	nopts.Log = log
	if opts.Network != nil {
		opts.Network(&nopts)
	}
	net, err := network.New(nopts)
	if err != nil {
		return none, sandbox.Inventory{}, hostReports{}, err
	}
	if err := net.Setup(ctx); err != nil {
		return none, sandbox.Inventory{}, hostReports{}, fmt.Errorf("set up host network (atelier network setup): %w", err)
	}
	vols, choice, err := pool.OpenSet(ctx, cfg, storage.Exec{}, log)
	if err != nil {
		return none, sandbox.Inventory{}, hostReports{}, err
	}
	log.Info("storage driver chosen for new volumes", "driver", choice.Driver, "reason", choice.Reason,
		"drivers_present", vols.Drivers())

	logs, err := SandboxLogs(cfg, log)
	if err != nil {
		return none, sandbox.Inventory{}, hostReports{}, err
	}
	var rt withAgent
	var listRuntimes func(context.Context) ([]string, error)
	switch cfg.Sandbox.Runtime {
	case "container":
		copts := container.DefaultOptions(cfg.Sandbox.StateDir, cfg.Sandbox.LogDir)
		copts.NetnsPath, copts.Log, copts.Logs = net.NetnsPath, log, logs
		copts.UserNS = container.UserNSMode(cfg.Sandbox.Container.UserNamespace)
		if opts.Container != nil {
			opts.Container(&copts)
		}
		d, err := container.New(copts)
		if err != nil {
			return none, sandbox.Inventory{}, hostReports{}, err
		}
		rt = withAgent{d, func(id string) agent.Dialer { return agent.Dialer(d.AgentDialer(id)) },
			// runc answers for its state dir: the binary runs and the root is readable.
			func(ctx context.Context) error {
				if _, err := d.List(ctx); err != nil {
					return fmt.Errorf("runc: %w", err)
				}
				return nil
			}}
		// A bundle without a container is what an interrupted boot leaves
		// (mount, loop device, socket dir): Destroy clears it too.
		listRuntimes = func(ctx context.Context) ([]string, error) {
			running, err := d.List(ctx)
			if err != nil {
				return nil, err
			}
			bundles, err := d.Bundles()
			return append(running, bundles...), err
		}
	case "firecracker":
		fopts := firecracker.OptionsFromConfig(cfg)
		fopts.Log, fopts.Logs = log, logs
		if err := firecracker.CheckKernel(fopts.Kernel, log); err != nil {
			return none, sandbox.Inventory{}, hostReports{}, err
		}
		d, err := firecracker.New(fopts)
		if err != nil {
			return none, sandbox.Inventory{}, hostReports{}, err
		}
		rt = withAgent{d, func(id string) agent.Dialer { return agent.VsockDialer(d.AgentSocket(id), d.AgentPort()) },
			func(ctx context.Context) error {
				if err := executableFile(fopts.Binary); err != nil {
					return fmt.Errorf("firecracker binary (advanced.server.firecracker.binaryPath): %w", err)
				}
				if _, err := os.Stat(fopts.Kernel); err != nil {
					return fmt.Errorf("guest kernel (advanced.server.firecracker.kernelPath): %w", err)
				}
				_, err := d.List(ctx)
				return err
			}}
		listRuntimes = d.List
	default:
		return none, sandbox.Inventory{}, hostReports{}, fmt.Errorf("sandbox.runtime %q: want firecracker, container or kubernetes", cfg.Sandbox.Runtime)
	}
	inv := sandbox.Inventory{
		Runtimes: listRuntimes,
		Links: func(ctx context.Context) ([]string, error) {
			links, err := net.Links(ctx)
			var out []string
			for _, l := range links {
				if l.SandboxID != "" {
					out = append(out, l.SandboxID)
				}
			}
			return out, err
		},
		Volumes: func(ctx context.Context) ([]sandbox.HostVolume, error) {
			vs, err := vols.List(ctx)
			var out []sandbox.HostVolume
			for _, v := range vs {
				if v.Kind == storage.KindSandbox {
					out = append(out, sandbox.HostVolume{ID: v.ID, Driver: v.Driver, SizeBytes: v.SizeBytes})
				}
			}
			return out, err
		},
	}
	return sandbox.Drivers{Runtime: rt, Network: net, Volumes: vols}, inv, hostReports{vols: vols, net: net, kind: kind}, nil
}

// executableFile fails unless path is a regular file with an execute bit.
func executableFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
