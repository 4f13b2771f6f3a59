package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"atelier/internal/agent"
)

// hostnameRE is an RFC 1123 host name.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

const netCommandTimeout = 10 * time.Second

// runFunc runs one argv to completion. The serve process uses os/exec;
// init routes it through its reaper, because there a plain Wait would race
// the wait4(-1) loop.
type runFunc func(ctx context.Context, argv []string) error

func execRun(ctx context.Context, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, netCommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func validateNetwork(cfg *agent.NetworkConfig) error {
	ip, err := netip.ParseAddr(cfg.IP)
	if err != nil {
		return errBadField("ip", "invalid address %q", cfg.IP)
	}
	if cfg.PrefixLen < 0 || cfg.PrefixLen > ip.BitLen() {
		return errBadField("prefixLen", "must be in [0, %d]", ip.BitLen())
	}
	if cfg.Gateway != "" {
		if _, err := netip.ParseAddr(cfg.Gateway); err != nil {
			return errBadField("gateway", "invalid address %q", cfg.Gateway)
		}
	}
	for _, d := range cfg.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return errBadField("dns", "invalid address %q", d)
		}
	}
	if cfg.Hostname != "" && (len(cfg.Hostname) > 253 || !hostnameRE.MatchString(cfg.Hostname)) {
		return errBadField("hostname", "invalid host name %q", cfg.Hostname)
	}
	if cfg.MAC != "" {
		if _, err := net.ParseMAC(cfg.MAC); err != nil {
			return errBadField("mac", "invalid MAC address %q", cfg.MAC)
		}
	}
	return nil
}

// pickDevice finds the interface with the MAC, or the first non-loopback.
func pickDevice(mac string) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces: %w", err)
	}
	want, _ := net.ParseMAC(mac)
	for _, i := range ifs {
		if mac != "" {
			if i.HardwareAddr.String() == want.String() {
				return i.Name, nil
			}
			continue
		}
		if i.Flags&net.FlagLoopback == 0 {
			return i.Name, nil
		}
	}
	if mac != "" {
		return "", errBadField("mac", "no interface has MAC %s", mac)
	}
	return "", errors.New("no network interface besides loopback")
}

// networkCommands are idempotent ip(8) invocations (replace, not add),
// so re-applying the same config after an agent restart is harmless.
func networkCommands(cfg agent.NetworkConfig, dev string) [][]string {
	cmds := [][]string{
		{"ip", "link", "set", "dev", "lo", "up"},
		{"ip", "link", "set", "dev", dev, "up"},
		{"ip", "addr", "replace", cfg.IP + "/" + strconv.Itoa(cfg.PrefixLen), "dev", dev},
	}
	if cfg.Gateway != "" {
		cmds = append(cmds, []string{"ip", "route", "replace", "default", "via", cfg.Gateway, "dev", dev})
	}
	return cmds
}

// hasAddress reports whether dev already carries ip (the kernel's own
// ip= autoconfiguration may have done the work).
func hasAddress(dev, ip string) bool {
	i, err := net.InterfaceByName(dev)
	if err != nil {
		return false
	}
	addrs, err := i.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.String() == ip {
			return true
		}
	}
	return false
}

// applyNetwork configures the interface, DNS and host name.
func applyNetwork(ctx context.Context, cfg agent.NetworkConfig, dev, etcDir string, run runFunc) (string, error) {
	var err error
	if dev == "" {
		if dev, err = pickDevice(cfg.MAC); err != nil {
			return "", err
		}
	}
	for _, argv := range networkCommands(cfg, dev) {
		if err := run(ctx, argv); err != nil {
			return dev, fmt.Errorf("configure %s: %w", dev, err)
		}
	}
	if err := writeNetworkFiles(cfg, etcDir); err != nil {
		return dev, err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return dev, fmt.Errorf("set hostname: %w", err)
		}
	}
	return dev, nil
}

// writeNetworkFiles writes resolv.conf, hostname and a hosts entry. Each
// is replaced by a rename, never written in place, and not fsynced: every
// boot writes them again from the kernel command line, and a fsync each
// would sit on the boot's path to a ready agent.
func writeNetworkFiles(cfg agent.NetworkConfig, etcDir string) error {
	if len(cfg.DNS) > 0 {
		var b strings.Builder
		for _, d := range cfg.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := replaceFile(filepath.Join(etcDir, "resolv.conf"), b.String()); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	if cfg.Hostname == "" {
		return nil
	}
	if err := replaceFile(filepath.Join(etcDir, "hostname"), cfg.Hostname+"\n"); err != nil {
		return fmt.Errorf("write hostname: %w", err)
	}
	hosts := filepath.Join(etcDir, "hosts")
	old, err := os.ReadFile(hosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read hosts: %w", err)
	}
	if len(old) == 0 {
		old = []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	}
	for _, line := range strings.Split(string(old), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "127.0.1.1" && f[1] == cfg.Hostname {
			return nil
		}
	}
	content := strings.TrimRight(string(old), "\n") + "\n127.0.1.1\t" + cfg.Hostname + "\n"
	if err := replaceFile(hosts, content); err != nil {
		return fmt.Errorf("write hosts: %w", err)
	}
	return nil
}

// replaceFile puts content at path (mode 0644) through a temporary file
// and a rename, so a reader never sees half of it; a symlink at path (an
// image's resolv.conf pointing at a resolver daemon's) is replaced too.
func replaceFile(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, werr := tmp.WriteString(content)
	cerr := tmp.Chmod(0o644)
	if err := errors.Join(werr, cerr, tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// configureNetwork is POST /network. Without ManageNetwork (container
// runtime: set up from outside) the values are only recorded.
func (s *Server) configureNetwork(w http.ResponseWriter, r *http.Request) error {
	var cfg agent.NetworkConfig
	if err := decode(w, r, &cfg, maxJSONBody, false); err != nil {
		return err
	}
	if err := validateNetwork(&cfg); err != nil {
		return err
	}
	res := agent.NetworkResult{Config: cfg}
	if s.opts.ManageNetwork {
		dev, err := applyNetwork(r.Context(), cfg, "", s.opts.EtcDir, execRun)
		if err != nil {
			return err
		}
		res.Applied, res.Device = true, dev
	}
	s.mu.Lock()
	s.network = &cfg
	s.mu.Unlock()
	return writeJSON(w, http.StatusOK, res)
}

// getNetwork is GET /network: the last values POSTed, 404 when none.
func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) error {
	s.mu.Lock()
	cfg := s.network
	s.mu.Unlock()
	if cfg == nil {
		return errNotFound("no network config recorded")
	}
	return writeJSON(w, http.StatusOK, cfg)
}
