package pool

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"atelier/internal/config"
	"atelier/internal/storage"
	"atelier/internal/storage/file"
	"atelier/internal/storage/internal/looptest"
	"atelier/internal/storage/internal/script"
)

var quiet = slog.New(slog.DiscardHandler)

func testHost(t *testing.T, r Runner, method string, sizeGB int, dm bool) *host {
	t.Helper()
	cfg := config.Default()
	cfg.Sandbox.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Setup.Storage = config.SetupStorage{Method: method, LoopSizeGB: sizeGB}
	h := newHost(cfg, r)
	h.dmWorks = func(context.Context) bool { return dm }
	h.log = quiet
	return h
}

// TestSetupLoopXFS is the path this machine takes (no device-mapper): a pool
// file on a loop device, XFS with reflink, mounted at <stateDir>/pool.
func TestSetupLoopXFS(t *testing.T) {
	looptest.Root(t)
	ctx := context.Background()
	h := testHost(t, storage.Exec{}, "loop", 10, false)
	backing := h.path(BackingFile)
	t.Cleanup(func() {
		if t.Failed() {
			_ = h.teardown(context.Background())
		}
		if err := looptest.CheckGone(backing, h.stateDir); err != nil {
			t.Error(err)
		}
	})

	rep, err := h.setup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ready || !rep.Changed || rep.Driver != "file" || !rep.Reflink ||
		rep.MountPoint != h.path(PoolDir) || !strings.HasPrefix(rep.Device, "/dev/loop") || rep.BackingFile != backing {
		t.Fatalf("first setup = %+v", rep)
	}
	if rep.Usage.TotalBytes < 9<<30 || rep.Usage.TotalBytes > 10<<30 {
		t.Fatalf("pool size %d, want about 10 GiB", rep.Usage.TotalBytes)
	}
	if a := allocated(t, backing); a > 1<<30 {
		t.Fatalf("pool file allocates %d bytes: not sparse", a)
	}

	// The file driver on the state dir works through the links, by reflink.
	d := file.New(file.Config{StateDir: h.stateDir, Log: quiet})
	img := filepath.Join(h.stateDir, "images", "base.ext4")
	if err := os.WriteFile(img, []byte(strings.Repeat("atelier ", 1<<16)), 0o600); err != nil {
		t.Fatal(err)
	}
	path, err := d.Clone(ctx, "base", "k3v9x2m4p8qa")
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(h.stateDir, "overlays", "k3v9x2m4p8qa.ext4") || d.Stats().Reflinks != 1 {
		t.Fatalf("clone at %s with %+v, want a reflink at the seed's path", path, d.Stats())
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, PoolDir, "overlays", "k3v9x2m4p8qa.ext4")); err != nil {
		t.Fatalf("clone is not on the pool: %v", err)
	}

	st, err := h.status(ctx, false)
	if err != nil || !st.Ready || st.Usage.Volumes != 2 || st.Device != rep.Device {
		t.Fatalf("status = %+v, %v", st, err)
	}
	again, err := h.setup(ctx)
	if err != nil || again.Changed || !again.Ready || again.Device != rep.Device {
		t.Fatalf("second setup = %+v, %v; want no change", again, err)
	}

	for range 2 {
		if err := h.teardown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := looptest.CheckGone(backing, h.stateDir); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(h.stateDir)
	if len(left) != 0 {
		t.Fatalf("state dir still holds %v", left)
	}
	st, err = h.status(ctx, false)
	if err != nil || st.Ready {
		t.Fatalf("status after teardown = %+v, %v", st, err)
	}
}

// TestSetupRevertsOnFailure: a state dir whose overlays directory holds
// files stops setup after it attached, formatted and mounted; everything
// is undone.
func TestSetupRevertsOnFailure(t *testing.T) {
	looptest.Root(t)
	h := testHost(t, storage.Exec{}, "loop", 10, false)
	backing := h.path(BackingFile)
	t.Cleanup(func() {
		if err := looptest.CheckGone(backing, h.stateDir); err != nil {
			t.Error(err)
			_ = h.teardown(context.Background())
		}
	})
	disk := filepath.Join(h.stateDir, "overlays", "k3v9x2m4p8qa.ext4")
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, []byte("user data"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := h.setup(context.Background())
	if err == nil || !strings.Contains(err.Error(), "holds files") {
		t.Fatalf("err = %v, want the overlays dir refused", err)
	}
	if err := looptest.CheckGone(backing, h.stateDir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{backing, h.path("images"), h.path("prebuilds")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
	if b, err := os.ReadFile(disk); err != nil || string(b) != "user data" {
		t.Fatalf("the existing disk was touched: %q %v", b, err)
	}
}

func TestSetupDeviceRefusals(t *testing.T) {
	regular := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		device func(t *testing.T) string
		want   string
	}{
		{"relative path", func(*testing.T) string { return "sdb" }, "absolute path"},
		{"missing", func(*testing.T) string { return "/dev/atelier-no-such-disk" }, "no such file"},
		{"regular file", func(*testing.T) string { return regular }, "not a block device"},
		{"too small", func(t *testing.T) string { return looptest.Attach(t, 1<<30) }, "smaller than the 10 GiB minimum"},
		{"mounted", func(t *testing.T) string {
			return looptest.MountSource(looptest.Mount(t, "ext4", 64<<20))
		}, "is mounted at"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.device(t)
			h := testHost(t, script.New(t), "device", 0, false) // runs no command
			h.st.Device = dev
			_, err := h.setup(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

const lvsPool = `{"report":[{"lv":[
 {"lv_name":"image-dev-base", "lv_size":"10737418240", "data_percent":"14.87", "metadata_percent":"", "origin":"", "lv_attr":"Vwi-a-tz--"},
 {"lv_name":"thin-pool", "lv_size":"96632569856", "data_percent":"1.66", "metadata_percent":"0.52", "origin":"", "lv_attr":"twi-aotz--"}]}]}`

var (
	lvsJSON     = []string{"/usr/sbin/lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size,data_percent,metadata_percent,origin,lv_attr", "sandbox-vg"}
	lvsThinPool = []string{"/usr/sbin/lvs", "--noheadings", "-o", "lv_name", "sandbox-vg/thin-pool"}
	vgMissing   = `  Volume group "sandbox-vg" not found`
)

// TestSetupLoopLVM drives the device-mapper path against a scripted runner:
// this machine has no device-mapper.
func TestSetupLoopLVM(t *testing.T) {
	ctx := context.Background()
	type tc struct {
		name        string
		haveBacking bool
		steps       func(backing string) []script.Step
		wantErr     string
		check       func(t *testing.T, h *host, rep Report)
	}
	cases := []tc{
		{
			name: "fresh",
			steps: func(b string) []script.Step {
				return []script.Step{
					script.Cmd(lvsThinPool...).Fails(vgMissing),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b),
					script.Cmd(losetupBin, "--find", "--show", b).Returns("/dev/loop7\n"),
					script.Cmd(vgsBin, "--noheadings", "-o", "vg_name", "sandbox-vg").Fails(vgMissing),
					script.Cmd(blkidBin, "-p", "-o", "value", "-s", "TYPE", "/dev/loop7").Exits(2, ""),
					script.Cmd(pvcreateBin, "-f", "/dev/loop7"),
					script.Cmd(vgcreateBin, "sandbox-vg", "/dev/loop7"),
					script.Cmd(lvcreateBin, "-l", "90%FREE", "-T", "sandbox-vg/thin-pool"),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b).Returns("/dev/loop7\n"),
					script.Cmd(lvsJSON...).Returns(lvsPool),
				}
			},
			check: func(t *testing.T, h *host, rep Report) {
				if !rep.Ready || !rep.Changed || rep.Driver != "lvm" || rep.Device != "/dev/loop7" ||
					rep.Usage.TotalBytes != 96632569856 || rep.Usage.Volumes != 1 {
					t.Fatalf("report = %+v", rep)
				}
				fi, err := os.Stat(h.path(BackingFile))
				if err != nil || fi.Size() != 10<<30 || allocated(t, h.path(BackingFile)) != 0 {
					t.Fatalf("backing file %v %v: want 10 GiB, sparse", fi, err)
				}
			},
		},
		{
			name: "failed thin pool undoes everything",
			steps: func(b string) []script.Step {
				return []script.Step{
					script.Cmd(lvsThinPool...).Fails(vgMissing),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b),
					script.Cmd(losetupBin, "--find", "--show", b).Returns("/dev/loop7\n"),
					script.Cmd(vgsBin, "--noheadings", "-o", "vg_name", "sandbox-vg").Fails(vgMissing),
					script.Cmd(blkidBin, "-p", "-o", "value", "-s", "TYPE", "/dev/loop7").Exits(2, ""),
					script.Cmd(pvcreateBin, "-f", "/dev/loop7"),
					script.Cmd(vgcreateBin, "sandbox-vg", "/dev/loop7"),
					script.Cmd(lvcreateBin, "-l", "90%FREE", "-T", "sandbox-vg/thin-pool").Fails("  thin-pool: Required device-mapper target(s) not detected in your kernel."),
					script.Cmd(lvremoveBin, "-f", "sandbox-vg/thin-pool").Fails(`  Failed to find logical volume "sandbox-vg/thin-pool"`),
					script.Cmd(vgremoveBin, "-f", "sandbox-vg"),
					script.Cmd(pvremoveBin, "-ff", "-y", "/dev/loop7"),
					script.Cmd(losetupBin, "-d", "/dev/loop7"),
				}
			},
			wantErr: "Required device-mapper target(s) not detected",
			check: func(t *testing.T, h *host, rep Report) {
				if _, err := os.Stat(h.path(BackingFile)); !os.IsNotExist(err) {
					t.Fatalf("backing file left: %v", err)
				}
			},
		},
		{
			name:        "already set up reports status",
			haveBacking: true,
			steps: func(b string) []script.Step {
				return []script.Step{
					script.Cmd(lvsThinPool...).Returns("  thin-pool\n"),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b).Returns("/dev/loop7\n"),
					script.Cmd(lvsJSON...).Returns(lvsPool),
				}
			},
			check: func(t *testing.T, h *host, rep Report) {
				if !rep.Ready || rep.Changed || rep.Device != "/dev/loop7" {
					t.Fatalf("report = %+v", rep)
				}
			},
		},
		{
			name:        "after a reboot: re-attach by file and activate",
			haveBacking: true,
			steps: func(b string) []script.Step {
				return []script.Step{
					script.Cmd(lvsThinPool...).Fails(vgMissing),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b),
					script.Cmd(losetupBin, "--find", "--show", b).Returns("/dev/loop3\n"),
					script.Cmd(vgsBin, "--noheadings", "-o", "vg_name", "sandbox-vg").Returns("  sandbox-vg\n"),
					script.Cmd(vgchangeBin, "-ay", "sandbox-vg"),
					script.Cmd(lvsThinPool...).Returns("  thin-pool\n"),
					script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", b).Returns("/dev/loop3\n"),
					script.Cmd(lvsJSON...).Returns(lvsPool),
				}
			},
			check: func(t *testing.T, h *host, rep Report) {
				if !rep.Ready || !rep.Changed || rep.Device != "/dev/loop3" {
					t.Fatalf("report = %+v", rep)
				}
				if fi, err := os.Stat(h.path(BackingFile)); err != nil || fi.Size() != 1<<20 {
					t.Fatalf("backing file replaced: %v %v", fi, err)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := testHost(t, nil, "loop", 10, true)
			backing := h.path(BackingFile)
			if c.haveBacking {
				if err := os.MkdirAll(h.stateDir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(backing, make([]byte, 1<<20), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			h.r = script.New(t, c.steps(backing)...)
			rep, err := h.setup(ctx)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			c.check(t, h, rep)
		})
	}

	t.Run("teardown", func(t *testing.T) {
		h := testHost(t, nil, "loop", 10, true)
		backing := h.path(BackingFile)
		if err := os.MkdirAll(h.stateDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(backing, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		h.r = script.New(t,
			script.Cmd(losetupBin, "-n", "-O", "NAME", "-j", backing).Returns("/dev/loop7\n"),
			script.Cmd(vgremoveBin, "-f", "sandbox-vg"),
			script.Cmd(pvremoveBin, "-ff", "-y", "/dev/loop7"),
			script.Cmd(losetupBin, "-d", "/dev/loop7"))
		if err := h.teardown(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(backing); !os.IsNotExist(err) {
			t.Fatalf("backing file left: %v", err)
		}
	})
}

func TestSetupMethods(t *testing.T) {
	ctx := context.Background()
	t.Run("unset method", func(t *testing.T) {
		_, err := testHost(t, script.New(t), "", 0, false).setup(ctx)
		if err == nil || !strings.Contains(err.Error(), "setup.storage.method is not set") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("loop without a size makes nothing", func(t *testing.T) {
		h := testHost(t, script.New(t), "loop", 0, false)
		_, err := h.setup(ctx)
		if err == nil || !strings.Contains(err.Error(), "setup.storage.loopSizeGb") {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(h.path(BackingFile)); !os.IsNotExist(err) {
			t.Fatalf("backing file made: %v", err)
		}
	})
	t.Run("relative state dir", func(t *testing.T) {
		h := testHost(t, script.New(t), "loop", 10, false)
		h.stateDir = "var/lib/sandbox"
		if _, err := h.setup(ctx); err == nil || !strings.Contains(err.Error(), "absolute") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("lvm without a thin pool", func(t *testing.T) {
		h := testHost(t, script.New(t, script.Cmd(lvsJSON...).Fails(vgMissing)), "lvm", 0, false)
		rep, err := h.setup(ctx)
		if err == nil || !strings.Contains(err.Error(), "needs an existing thin pool") || rep.Ready {
			t.Fatalf("setup = %+v, %v", rep, err)
		}
	})
	t.Run("lvm with a thin pool", func(t *testing.T) {
		h := testHost(t, script.New(t, script.Cmd(lvsJSON...).Returns(lvsPool)), "lvm", 0, false)
		rep, err := h.setup(ctx)
		if err != nil || !rep.Ready || rep.Driver != "lvm" || rep.Changed {
			t.Fatalf("setup = %+v, %v", rep, err)
		}
	})
	t.Run("file makes the directories once", func(t *testing.T) {
		h := testHost(t, script.New(t), "file", 0, false)
		rep, err := h.setup(ctx)
		if err != nil || !rep.Ready || !rep.Changed || rep.Driver != "file" || rep.VolumeDir != h.path("overlays") {
			t.Fatalf("setup = %+v, %v", rep, err)
		}
		for _, d := range []string{"images", "prebuilds", "overlays"} {
			if fi, err := os.Stat(h.path(d)); err != nil || !fi.IsDir() {
				t.Fatalf("%s: %v", d, err)
			}
		}
		rep, err = h.setup(ctx)
		if err != nil || rep.Changed {
			t.Fatalf("second setup = %+v, %v", rep, err)
		}
	})
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	cfg := config.Default()
	cfg.Sandbox.StateDir = t.TempDir()
	cases := []struct {
		method string
		steps  []script.Step
		want   string
	}{
		{"file", nil, "file"},
		{"lvm", nil, "lvm"},
		{"", []script.Step{script.Cmd(lvsThinPool...).Returns("  thin-pool\n")}, "lvm"},
		{"", []script.Step{script.Cmd(lvsThinPool...).Fails(vgMissing)}, "file"},
	}
	for _, tc := range cases {
		cfg.Setup.Storage.Method = tc.method
		v, choice, err := Open(ctx, cfg, script.New(t, tc.steps...), quiet)
		if err != nil || choice.Driver != tc.want {
			t.Fatalf("Open(%q) = %+v, %v; want %s", tc.method, choice, err, tc.want)
		}
		want := "/dev/sandbox-vg/sandbox-k3v9x2m4p8qa"
		if tc.want == "file" {
			want = filepath.Join(cfg.Sandbox.StateDir, "overlays", "k3v9x2m4p8qa.ext4")
		}
		if p := v.Path("k3v9x2m4p8qa"); p != want {
			t.Errorf("Open(%q): Path = %q, want %q", tc.method, p, want)
		}
	}
	cfg.Setup.Storage.Method = "zfs"
	if _, _, err := Open(ctx, cfg, script.New(t), quiet); err == nil {
		t.Fatal("unknown method opened")
	}
}

// TestSetupDeviceXFS formats a whole (loop) device, mounts it and sets it up
// again without change; teardown unmounts but leaves the device alone.
func TestSetupDeviceXFS(t *testing.T) {
	dev := looptest.Attach(t, 10<<30)
	ctx := context.Background()
	h := testHost(t, storage.Exec{}, "device", 0, false)
	h.st.Device = dev
	t.Cleanup(func() {
		if t.Failed() {
			_ = h.teardown(context.Background())
		}
		if m := looptest.MountsUnder(h.stateDir); len(m) > 0 {
			t.Errorf("mounts left: %v", m)
		}
	})
	rep, err := h.setup(ctx)
	if err != nil || !rep.Ready || !rep.Changed || !rep.Reflink || rep.Device != dev || rep.MountPoint != h.path(PoolDir) {
		t.Fatalf("setup = %+v, %v", rep, err)
	}
	if src := looptest.MountSource(h.path(PoolDir)); src != dev {
		t.Fatalf("pool mounted from %q, want %s", src, dev)
	}
	rep, err = h.setup(ctx)
	if err != nil || rep.Changed || !rep.Ready {
		t.Fatalf("second setup = %+v, %v", rep, err)
	}
	disk := filepath.Join(h.stateDir, "overlays", "k3v9x2m4p8qa.ext4")
	if err := os.WriteFile(disk, []byte("user data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if m := looptest.MountsUnder(h.stateDir); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
	// The filesystem stays on the device: setting up again mounts it
	// without formatting.
	rep, err = h.setup(ctx)
	if err != nil || !rep.Changed || !rep.Ready {
		t.Fatalf("setup after teardown = %+v, %v", rep, err)
	}
	if b, err := os.ReadFile(disk); err != nil || string(b) != "user data" {
		t.Fatalf("volume lost over teardown and setup: %q %v", b, err)
	}
	if err := h.teardown(ctx); err != nil {
		t.Fatal(err)
	}
}
