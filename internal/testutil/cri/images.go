package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// PkgPause is the sandbox image's program: it holds a pod's namespaces until SIGTERM.
const PkgPause = testutil.RootModule + "/internal/testutil/cri/pause"

// pkgImageBuilder is the repository's image builder, the one `make image` runs.
const pkgImageBuilder = testutil.RootModule + "/deploy/image"

// Image is an OCI image layout tarball holding one static binary, as /FILE, its entrypoint.
type Image struct {
	// Ref is the image's name as CRI and ctr show it: shunt.test/FILE:test.
	Ref string
	// Tar is the tarball's path.
	Tar string
}

// Images builds images at most once per test binary run, into a directory the caller owns
// (typically made and removed by TestMain).
type Images struct {
	dir string

	mu      sync.Mutex
	builder string
	built   map[string]builtImage
}

type builtImage struct {
	image Image
	err   error
}

// NewImages returns an Images that builds into dir.
func NewImages(dir string) *Images {
	return &Images{dir: dir, built: make(map[string]builtImage)}
}

// Image returns the image of the main package pkg (an import path), built static with
// CGO_ENABLED=0 and written by deploy/image with its binary as /FILE (FILE: the package's last
// element). A failed build fails t, and every later caller too.
func (im *Images) Image(t testing.TB, pkg string) Image {
	t.Helper()
	im.mu.Lock()
	defer im.mu.Unlock()
	r, ok := im.built[pkg]
	if !ok {
		r.image, r.err = im.build(pkg)
		im.built[pkg] = r
	}
	if r.err != nil {
		t.Fatalf("image of %s: %v", pkg, r.err)
	}
	return r.image
}

// Pause returns the sandbox image.
func (im *Images) Pause(t testing.TB) Image {
	t.Helper()
	return im.Image(t, PkgPause)
}

func (im *Images) build(pkg string) (Image, error) {
	if im.builder == "" {
		b := filepath.Join(im.dir, "cri-image-builder")
		if err := goBuild(b, pkgImageBuilder); err != nil {
			return Image{}, err
		}
		im.builder = b
	}
	file := path.Base(pkg)
	bin := filepath.Join(im.dir, "cri-static", file)
	if err := goBuild(bin, pkg); err != nil {
		return Image{}, err
	}
	img := Image{Ref: "shunt.test/" + file + ":test", Tar: filepath.Join(im.dir, "cri-"+file+".tar")}
	out, err := exec.Command(im.builder, "-binary", bin, "-file", file, "-o", img.Tar,
		"-name", "shunt.test/"+file, "-tag", "test").CombinedOutput()
	if err != nil {
		return Image{}, fmt.Errorf("deploy/image %s: %w\n%s", file, err, out)
	}
	return img, nil
}

// goBuild builds pkg static into out.
func goBuild(out, pkg string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
