package lvm

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"atelier/internal/storage"
	"atelier/internal/storage/internal/script"
)

var quiet = slog.New(slog.DiscardHandler)

func sample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func lvs(out string) script.Step {
	return script.Cmd(append([]string{lvsBin}, lvsArgs...)...).Returns(out)
}

var cmd = script.Cmd

const (
	newID   = "n3wn3wn3wn3w"
	haveID  = "k3v9x2m4p8qa" // in lvs-pool.json, 10 GiB, origin image-dev-base
	bigID   = "r7t2w5y8z1bc" // 50 GiB
	wsID    = "w5e8r1t4y7ua" // has a prebuild in lvs-pool.json
	otherWS = "q1q1q1q1q1q1" // has none
)

func TestOperations(t *testing.T) {
	pool := sample(t, "lvs-pool.json")
	full := sample(t, "lvs-full.json")
	empty := sample(t, "lvs-empty.json")
	notFound := `  Failed to find logical volume "sandbox-vg/sandbox-n3wn3wn3wn3w"`
	vgMissing := `  Volume group "sandbox-vg" not found
  Cannot process volume group sandbox-vg`

	tests := []struct {
		name     string
		limits   Limits
		op       func(ctx context.Context, d *Driver) (string, error)
		steps    []script.Step
		wantPath string
		wantErr  error
		wantMsg  []string // substrings of the error
	}{
		{
			name: "clone from image",
			op:   func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "sandbox-"+newID, "sandbox-vg/image-dev-base")},
			wantPath: "/dev/sandbox-vg/sandbox-" + newID,
		},
		{
			name: "clone from prebuild",
			op: func(ctx context.Context, d *Driver) (string, error) {
				return d.CloneFrom(ctx, storage.Prebuild(wsID), newID)
			},
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "sandbox-"+newID, "sandbox-vg/prebuild-"+wsID)},
			wantPath: "/dev/sandbox-vg/sandbox-" + newID,
		},
		{
			name:     "clone of an existing volume returns it untouched",
			op:       func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "node.20", haveID) },
			steps:    []script.Step{lvs(pool)},
			wantPath: "/dev/sandbox-vg/sandbox-" + haveID,
		},
		{
			name:    "clone of a missing image",
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "nope", newID) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrNotFound,
			wantMsg: []string{"sandbox-vg/image-nope"},
		},
		{
			name:    "clone on an empty volume group",
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps:   []script.Step{lvs(empty)},
			wantErr: storage.ErrNotFound,
		},
		{
			name:    "clone without the volume group",
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps:   []script.Step{lvs("").Fails(vgMissing)},
			wantErr: storage.ErrNotFound,
		},
		{
			name: "failed lvcreate removes what it made",
			op:   func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "sandbox-"+newID, "sandbox-vg/image-dev-base").Fails("  device-mapper: reload ioctl on (253:9) failed: No space left on device"),
				cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+newID)},
			wantMsg: []string{"No space left on device"},
		},
		{
			name: "failed lvcreate with nothing made: the absent volume is fine",
			op:   func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "sandbox-"+newID, "sandbox-vg/image-dev-base").Fails("  Insufficient suitable allocatable extents"),
				cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+newID).Fails(notFound)},
			wantMsg: []string{"Insufficient suitable allocatable extents"},
		},
		{
			name:    "clone refused at 95 % data",
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps:   []script.Step{lvs(full)},
			wantErr: storage.ErrPoolFull,
			wantMsg: []string{"data is 95.12% used", "limit 90%"},
		},
		{
			name:    "clone refused over the metadata limit",
			limits:  Limits{MetadataPercentMax: 3},
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrPoolFull,
			wantMsg: []string{"metadata is 3.07% used", "limit 3%"},
		},
		{
			name:    "clone refused over the overcommit ratio",
			limits:  Limits{OvercommitMax: 1.2},
			op:      func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrPoolFull,
			// 100 GiB of thin volumes + the 10 GiB clone on a 90 GiB pool.
			wantMsg: []string{"110.0 GiB", "1.22x the 90.0 GiB pool", "limit 1.2x"},
		},
		{
			name: "clone allowed just under the overcommit ratio",
			// (100+10)/90 = 1.2222
			limits: Limits{OvercommitMax: 1.23},
			op:     func(ctx context.Context, d *Driver) (string, error) { return d.Clone(ctx, "dev-base", newID) },
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "sandbox-"+newID, "sandbox-vg/image-dev-base")},
			wantPath: "/dev/sandbox-vg/sandbox-" + newID,
		},
		{
			name:  "delete",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.Delete(ctx, haveID) },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+haveID)},
		},
		{
			name:  "delete of an absent volume is success",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.Delete(ctx, newID) },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+newID).Fails(notFound)},
		},
		{
			name:  "delete without the volume group is success",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.Delete(ctx, newID) },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+newID).Fails(vgMissing)},
		},
		{
			name:  "delete image",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.DeleteImage(ctx, "dev-base") },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/image-dev-base")},
		},
		{
			name:  "delete of an absent image is success",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.DeleteImage(ctx, "gone") },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/image-gone").Fails(`  Failed to find logical volume "sandbox-vg/image-gone"`)},
		},
		{
			name:    "delete image refuses a path",
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.DeleteImage(ctx, "../thin-pool") },
			wantErr: storage.ErrInvalid,
		},
		{
			name:    "delete of an open volume fails",
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.Delete(ctx, haveID) },
			steps:   []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/sandbox-"+haveID).Fails(`  Logical volume sandbox-vg/sandbox-k3v9x2m4p8qa in use.`)},
			wantMsg: []string{"in use"},
		},
		{
			name: "resize grows",
			op:   func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, haveID, 20<<30) },
			steps: []script.Step{lvs(pool),
				cmd(lvextendBin, "-L", "21474836480b", "sandbox-vg/sandbox-"+haveID)},
		},
		{
			name: "resize rounds up to a sector",
			op:   func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, haveID, 20<<30+1) },
			steps: []script.Step{lvs(pool),
				cmd(lvextendBin, "-L", "21474836992b", "sandbox-vg/sandbox-"+haveID)},
		},
		{
			name:  "resize to the same size is a no-op",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, haveID, 10<<30) },
			steps: []script.Step{lvs(pool)},
		},
		{
			name:    "resize refuses to shrink",
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, bigID, 10<<30) },
			steps:   []script.Step{lvs(pool)},
			wantMsg: []string{"shrinking from 53687091200 to 10737418240"},
		},
		{
			name:    "resize of an absent volume",
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, newID, 20<<30) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrNotFound,
		},
		{
			name:    "resize refused over the overcommit ratio",
			limits:  Limits{OvercommitMax: 2},
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.Resize(ctx, haveID, 100<<30) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrPoolFull,
			wantMsg: []string{"190.0 GiB", "limit 2x"},
		},
		{
			name: "first prebuild of a workspace",
			op:   func(ctx context.Context, d *Driver) (string, error) { return "", d.Prebuild(ctx, otherWS, haveID) },
			steps: []script.Step{lvs(pool),
				cmd(lvcreateBin, "-s", "-kn", "-n", "prebuild-"+otherWS, "sandbox-vg/sandbox-"+haveID)},
		},
		{
			name: "prebuild replaces the old one once the new one exists",
			op:   func(ctx context.Context, d *Driver) (string, error) { return "", d.Prebuild(ctx, wsID, bigID) },
			steps: []script.Step{lvs(pool),
				cmd(lvrenameBin, "sandbox-vg", "prebuild-"+wsID, "prebuild-"+wsID+"-old"),
				cmd(lvcreateBin, "-s", "-kn", "-n", "prebuild-"+wsID, "sandbox-vg/sandbox-"+bigID),
				cmd(lvremoveBin, "-f", "sandbox-vg/prebuild-"+wsID+"-old")},
		},
		{
			name: "failed prebuild puts the old one back",
			op:   func(ctx context.Context, d *Driver) (string, error) { return "", d.Prebuild(ctx, wsID, bigID) },
			steps: []script.Step{lvs(pool),
				cmd(lvrenameBin, "sandbox-vg", "prebuild-"+wsID, "prebuild-"+wsID+"-old"),
				cmd(lvcreateBin, "-s", "-kn", "-n", "prebuild-"+wsID, "sandbox-vg/sandbox-"+bigID).Fails("  Failed to activate new LV."),
				cmd(lvremoveBin, "-f", "sandbox-vg/prebuild-"+wsID),
				cmd(lvrenameBin, "sandbox-vg", "prebuild-"+wsID+"-old", "prebuild-"+wsID)},
			wantMsg: []string{"Failed to activate new LV"},
		},
		{
			name:    "prebuild of an absent sandbox",
			op:      func(ctx context.Context, d *Driver) (string, error) { return "", d.Prebuild(ctx, wsID, newID) },
			steps:   []script.Step{lvs(pool)},
			wantErr: storage.ErrNotFound,
		},
		{
			name:  "delete prebuild",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.DeletePrebuild(ctx, wsID) },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/prebuild-"+wsID)},
		},
		{
			name:  "delete of an absent prebuild is success",
			op:    func(ctx context.Context, d *Driver) (string, error) { return "", d.DeletePrebuild(ctx, otherWS) },
			steps: []script.Step{cmd(lvremoveBin, "-f", "sandbox-vg/prebuild-"+otherWS).Fails(`  Failed to find logical volume "sandbox-vg/prebuild-q1q1q1q1q1q1"`)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := script.New(t, tc.steps...)
			d := New(s, Config{Limits: tc.limits, Log: quiet})
			path, err := tc.op(context.Background(), d)
			if tc.wantErr == nil && len(tc.wantMsg) == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
			} else {
				if err == nil {
					t.Fatal("no error")
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("err = %v, want %v", err, tc.wantErr)
				}
				for _, m := range tc.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("err %q lacks %q", err, m)
					}
				}
			}
			if path != tc.wantPath {
				t.Errorf("path = %q, want %q", path, tc.wantPath)
			}
		})
	}
}

func TestInvalidIDsRunNothing(t *testing.T) {
	ctx := context.Background()
	ops := map[string]func(d *Driver) error{
		"clone bad sandbox id":      func(d *Driver) error { _, err := d.Clone(ctx, "dev-base", "ABC"); return err },
		"clone sandbox id with dot": func(d *Driver) error { _, err := d.Clone(ctx, "dev-base", "../k3v9x2m4p8"); return err },
		"clone bad image":           func(d *Driver) error { _, err := d.Clone(ctx, "../../etc", newID); return err },
		"clone image with space":    func(d *Driver) error { _, err := d.Clone(ctx, "dev base", newID); return err },
		"clone image too long":      func(d *Driver) error { _, err := d.Clone(ctx, strings.Repeat("a", 64), newID); return err },
		"clone from a sandbox": func(d *Driver) error {
			_, err := d.CloneFrom(ctx, storage.Source{Kind: storage.KindSandbox, ID: haveID}, newID)
			return err
		},
		"clone bad prebuild": func(d *Driver) error {
			_, err := d.CloneFrom(ctx, storage.Prebuild("x;rm -rf /"), newID)
			return err
		},
		"create image bad id": func(d *Driver) error { return d.CreateImage(ctx, "-rf", "/dev/null", 1<<30) },
		"prebuild bad ws":     func(d *Driver) error { return d.Prebuild(ctx, "WS", haveID) },
		"prebuild bad sandbox": func(d *Driver) error {
			return d.Prebuild(ctx, wsID, "sandbox-vg/thin-pool")
		},
		"delete prebuild bad": func(d *Driver) error { return d.DeletePrebuild(ctx, "") },
		"resize bad":          func(d *Driver) error { return d.Resize(ctx, "--all", 1<<30) },
		"delete bad":          func(d *Driver) error { return d.Delete(ctx, "thin-pool") },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			s := script.New(t) // any command fails the test
			err := op(New(s, Config{Log: quiet}))
			if !errors.Is(err, storage.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if p := New(script.New(t), Config{}).Path("../x"); p != "" {
		t.Errorf("Path of an invalid id = %q", p)
	}
}

func TestCreateImage(t *testing.T) {
	pool := sample(t, "lvs-pool.json")
	// A sparse source: 1 MiB of data at 0 and 4 KiB at 3 MiB, 4 MiB long.
	src := filepath.Join(t.TempDir(), "new.ext4")
	want := make([]byte, 4<<20)
	for i := range 1 << 20 {
		want[i] = byte(i*7 + 1)
	}
	copy(want[3<<20:], bytes.Repeat([]byte("atelier!"), 512))
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}
	create := []string{lvcreateBin, "-V", "2147483648b", "-T", "sandbox-vg/thin-pool", "-n", "image-new"}

	t.Run("writes the image onto the new volume", func(t *testing.T) {
		dev := t.TempDir()
		node := filepath.Join(dev, "sandbox-vg", "image-new")
		appear := func() {
			if err := os.MkdirAll(filepath.Dir(node), 0o755); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(node, nil, 0o600); err != nil {
				t.Error(err)
			}
		}
		s := script.New(t, lvs(pool), script.Step{Argv: create, Do: appear})
		d := New(s, Config{DevDir: dev, Log: quiet})
		if err := d.CreateImage(context.Background(), "new", src, 2<<30); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(node)
		if err != nil {
			t.Fatal(err)
		}
		// The node is a plain file here; the zero gap was skipped, not
		// written, and the content matches up to the last data block.
		if len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) || !bytes.Equal(got[3<<20:], want[3<<20:len(got)]) {
			t.Fatalf("device content differs from the image (len %d)", len(got))
		}
		if len(got) < 3<<20+4096 {
			t.Fatalf("device holds %d bytes, want the data at 3 MiB", len(got))
		}
	})
	t.Run("size grows to the source", func(t *testing.T) {
		s := script.New(t, lvs(pool),
			cmd(lvcreateBin, "-V", "4194304b", "-T", "sandbox-vg/thin-pool", "-n", "image-new").Fails("  Volume group has insufficient free space"),
			cmd(lvremoveBin, "-f", "sandbox-vg/image-new").Fails(`  Failed to find logical volume "sandbox-vg/image-new"`))
		err := New(s, Config{Log: quiet}).CreateImage(context.Background(), "new", src, 1)
		if err == nil || !strings.Contains(err.Error(), "insufficient free space") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("failed write removes the volume", func(t *testing.T) {
		// No device node appears, so the write fails after lvcreate.
		s := script.New(t, lvs(pool), cmd(create...), cmd(lvremoveBin, "-f", "sandbox-vg/image-new"))
		err := New(s, Config{DevDir: t.TempDir(), Log: quiet}).CreateImage(context.Background(), "new", src, 2<<30)
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want the missing device", err)
		}
	})
	t.Run("existing image", func(t *testing.T) {
		s := script.New(t, lvs(pool))
		err := New(s, Config{Log: quiet}).CreateImage(context.Background(), "dev-base", src, 2<<30)
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
	})
	t.Run("pool full", func(t *testing.T) {
		s := script.New(t, lvs(sample(t, "lvs-full.json")))
		err := New(s, Config{Log: quiet}).CreateImage(context.Background(), "new", src, 2<<30)
		if !errors.Is(err, storage.ErrPoolFull) || !strings.Contains(err.Error(), "95.12%") {
			t.Fatalf("err = %v, want ErrPoolFull with the numbers", err)
		}
	})
	t.Run("missing source runs nothing", func(t *testing.T) {
		s := script.New(t)
		err := New(s, Config{Log: quiet}).CreateImage(context.Background(), "new", filepath.Join(t.TempDir(), "none"), 2<<30)
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestListAndUsage(t *testing.T) {
	const gi = int64(1 << 30)
	tests := []struct {
		file      string
		wantNames []string
		wantErr   error
		usage     storage.Usage
	}{
		{
			file: "lvs-pool.json",
			wantNames: []string{"image-dev-base", "image-node.20", "prebuild-w5e8r1t4y7ua",
				"sandbox-h4j6l8n0q2sd", "sandbox-k3v9x2m4p8qa", "sandbox-r7t2w5y8z1bc"},
			usage: storage.Usage{Driver: "lvm", TotalBytes: 96632569856, UsedBytes: 11992101919,
				VirtualBytes: 100 * gi, DataPercent: 12.41, MetadataPercent: 3.07, Volumes: 6},
		},
		{
			file:    "lvs-empty.json",
			wantErr: storage.ErrNotFound, // no thin pool
		},
		{
			file:      "lvs-full.json",
			wantNames: []string{"image-dev-base", "sandbox-k3v9x2m4p8qa", "sandbox-r7t2w5y8z1bc"},
			usage: storage.Usage{Driver: "lvm", TotalBytes: 100 * gi, UsedBytes: 102134322298,
				VirtualBytes: 110 * gi, DataPercent: 95.12, MetadataPercent: 41.5, Volumes: 3},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			out := sample(t, tc.file)
			s := script.New(t, lvs(out), lvs(out))
			d := New(s, Config{Log: quiet})
			vols, err := d.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, v := range vols {
				names = append(names, v.Name)
				if v.Path != "/dev/sandbox-vg/"+v.Name || storage.VolumeName(v.Kind, v.ID) != v.Name {
					t.Errorf("volume %+v: path or kind/id do not match its name", v)
				}
			}
			if !slices.Equal(names, tc.wantNames) {
				t.Errorf("names = %q, want %q", names, tc.wantNames)
			}
			u, err := d.Usage(context.Background())
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("usage err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u != tc.usage {
				t.Errorf("usage = %+v\n  want %+v", u, tc.usage)
			}
		})
	}

	t.Run("fields of one volume", func(t *testing.T) {
		s := script.New(t, lvs(sample(t, "lvs-pool.json")))
		vols, err := New(s, Config{Log: quiet}).List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := storage.Volume{Name: "sandbox-h4j6l8n0q2sd", Kind: storage.KindSandbox, ID: "h4j6l8n0q2sd",
			Path: "/dev/sandbox-vg/sandbox-h4j6l8n0q2sd", SizeBytes: 10 * gi, UsedBytes: 2372969431,
			Origin: "prebuild-w5e8r1t4y7ua", Driver: storage.DriverLVM}
		if i := slices.IndexFunc(vols, func(v storage.Volume) bool { return v.Name == want.Name }); i < 0 || vols[i] != want {
			t.Errorf("volumes = %+v\n want one = %+v", vols, want)
		}
	})

	t.Run("stat", func(t *testing.T) {
		pool := sample(t, "lvs-pool.json")
		s := script.New(t, lvs(pool), lvs(pool))
		d := New(s, Config{Log: quiet})
		v, err := d.Stat(context.Background(), storage.KindImage, "dev-base")
		if err != nil || v.SizeBytes != 10*gi || v.Driver != storage.DriverLVM || v.Path != "/dev/sandbox-vg/image-dev-base" {
			t.Errorf("stat image-dev-base = %+v, %v", v, err)
		}
		if _, err := d.Stat(context.Background(), storage.KindSandbox, newID); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("stat of a missing volume: %v, want ErrNotFound", err)
		}
	})
}

func TestParseReportNumbers(t *testing.T) {
	// json_std reports numbers as numbers, and null for none.
	st, err := parseReport([]byte(`{"report":[{"lv":[{"lv_name":"thin-pool","lv_size":1073741824,"data_percent":1.5,"metadata_percent":null,"origin":"","lv_attr":"twi-a-tz--"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := st.pool(); p == nil || p.sizeByte != 1<<30 || p.DataPct != 1.5 || p.MetaPct != 0 {
		t.Fatalf("pool = %+v", st.pool())
	}
	for _, bad := range []string{`not json`, `{"report":[{"lv":[{"lv_size":"12x"}]}]}`} {
		if _, err := parseReport([]byte(bad)); err == nil {
			t.Errorf("parseReport(%q) succeeded", bad)
		}
	}
}
