package testutil

import (
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"
)

// Binaries builds main packages at most once per test binary run, into a
// directory the caller owns (typically made and removed by TestMain).
type Binaries struct {
	dir string

	mu    sync.Mutex
	built map[string]built
}

type built struct {
	path string
	out  []byte
	err  error
}

// NewBinaries returns a Binaries that builds into dir.
func NewBinaries(dir string) *Binaries {
	return &Binaries{dir: dir, built: make(map[string]built)}
}

// Use makes Path return the prebuilt binary path for pkg instead of
// building it: a test run can check exactly the binary a release ships.
func (b *Binaries) Use(pkg, path string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.built[pkg] = built{path: path}
}

// Path returns the binary of the main package pkg (an import path), building
// it on first use. A failed build fails t, and every later caller too.
func (b *Binaries) Path(t testing.TB, pkg string) string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.built[pkg]
	if !ok {
		r.path = filepath.Join(b.dir, path.Base(pkg))
		// go test puts its own GOROOT/bin first in PATH.
		r.out, r.err = exec.Command("go", "build", "-o", r.path, pkg).CombinedOutput()
		b.built[pkg] = r
	}
	if r.err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, r.err, r.out)
	}
	return r.path
}
