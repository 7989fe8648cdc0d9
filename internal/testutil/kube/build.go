package kube

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the kube-apiserver version that e2e/tools/kube pins.
const Version = "v1.36.3"

const (
	rootModule = "github.com/shuntmesh/shunt"
	apiserver  = "k8s.io/kubernetes/cmd/kube-apiserver"
)

// buildFlags are go build's flags but -o. The version variables are what
// Kubernetes' own build sets (hack/lib/version.sh); without them /version
// reports v0.0.0-master.
var buildFlags = []string{
	"-trimpath",
	"-ldflags=-s -w" +
		" -X k8s.io/component-base/version.gitVersion=" + Version +
		" -X k8s.io/component-base/version.gitMajor=1" +
		" -X k8s.io/component-base/version.gitMinor=36" +
		" -X k8s.io/component-base/version.gitTreeState=clean",
}

// built caches APIServerBinary's result for the rest of the test binary's run.
var built struct {
	mu   sync.Mutex
	path string
}

// APIServerBinary returns the path of kube-apiserver Version, building it
// from the module e2e/tools/kube into bin/kube/ under the repository root
// unless a build of the same go.mod, go.sum and flags is there. A cold build takes
// minutes. Test binaries that run at the same time (go test ./...) share the
// build through a lock file; a failed build fails t.
func APIServerBinary(t testing.TB) string {
	t.Helper()
	built.mu.Lock()
	defer built.mu.Unlock()
	if built.path != "" {
		return built.path
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path, err := buildAPIServer(t, root)
	if err != nil {
		t.Fatal(err)
	}
	built.path = path
	return path
}

// repoRoot walks up from the working directory to the directory whose go.mod
// declares rootModule.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if modulePath(filepath.Join(dir, "go.mod")) == rootModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", rootModule)
		}
		dir = parent
	}
}

// modulePath returns the module path that the go.mod file at path declares,
// or "" when there is none.
func modulePath(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// buildAPIServer builds kube-apiserver under the lock bin/kube/.lock. The
// stamp file beside the binary holds a hash of the build's inputs (see
// moduleStamp); the binary and then the stamp are renamed into place, so a reader
// never sees a partial file.
func buildAPIServer(t testing.TB, root string) (string, error) {
	modDir := filepath.Join(root, "e2e", "tools", "kube")
	binDir := filepath.Join(root, "bin", "kube")
	path := filepath.Join(binDir, "kube-apiserver-"+Version)
	stampPath := path + ".stamp"

	stamp, err := moduleStamp(modDir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(binDir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()

	if have, err := os.ReadFile(stampPath); err == nil && string(have) == stamp {
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
	}

	// go build will not overwrite a file that is not a binary: build into
	// a fresh directory beside the binary, then rename.
	tmpDir, err := os.MkdirTemp(binDir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmpDir)
	tmpPath := filepath.Join(tmpDir, "kube-apiserver")

	start := time.Now()
	cmd := exec.Command("go", slices.Concat([]string{"build"}, buildFlags, []string{"-o", tmpPath, apiserver})...)
	cmd.Dir = modDir
	// -mod=readonly: the committed go.mod and go.sum are complete, and a
	// test must not rewrite them. GOWORK=off: a go.work above the repository
	// must not pull the tools module into it. CGO_ENABLED=0, as Kubernetes
	// releases build it. -buildvcs=false: GOFLAGS replaces the user's.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", apiserver, modDir, err, out)
	}
	t.Logf("built kube-apiserver %s in %v", Version, time.Since(start).Round(time.Second))

	if err := os.Rename(tmpPath, path); err != nil {
		return "", err
	}
	if err := writeFileAtomic(stampPath, []byte(stamp)); err != nil {
		return "", err
	}
	return path, nil
}

// moduleStamp hashes the build flags and the tools module's go.mod and
// go.sum, which fix every byte of the build but the Go version's.
func moduleStamp(modDir string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%q\n", buildFlags)
	for _, name := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(modDir, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(data))
		h.Write(data)
	}
	return Version + " " + hex.EncodeToString(h.Sum(nil)) + "\n", nil
}

// lockFile takes an exclusive flock on path, creating it, and returns the
// function that releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
