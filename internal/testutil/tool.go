package testutil

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

// RootModule is the module whose go.mod marks the repository root.
const RootModule = "github.com/shuntmesh/shunt"

// ToolEnv is the environment of go commands run in a tools module: its committed go.mod and go.sum
// are complete and a test must not rewrite them (-mod=readonly); a go.work above the repository must
// not take the module in (GOWORK=off); tools are built static, as their releases are.
var ToolEnv = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false", "CGO_ENABLED=0")

var tools struct {
	mu    sync.Mutex
	paths map[string]string
}

// ToolBinary returns the binary of main package pkg built from the tools module modDir (relative to
// the repository root) with go build flags, cached at out (relative to the root). It builds only
// when out is missing or was built from another go.mod, go.sum or flags (a stamp file beside it
// records them), so a cold build happens once per machine. Test binaries running at once share the
// build through an flock on out+".lock"; the binary and its stamp are renamed into place, so no
// reader sees a partial file. A failed build fails t.
func ToolBinary(t testing.TB, modDir, pkg, out string, flags ...string) string {
	t.Helper()
	tools.mu.Lock()
	defer tools.mu.Unlock()
	if p, ok := tools.paths[out]; ok {
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path, err := buildTool(t, filepath.Join(root, modDir), pkg, filepath.Join(root, out), flags)
	if err != nil {
		t.Fatalf("build %s: %v", pkg, err)
	}
	if tools.paths == nil {
		tools.paths = make(map[string]string)
	}
	tools.paths[out] = path
	return path
}

func buildTool(t testing.TB, modDir, pkg, path string, flags []string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s %q\n", pkg, flags)
	for _, name := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(modDir, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(data))
		h.Write(data)
	}
	stamp := hex.EncodeToString(h.Sum(nil)) + "\n"
	stampPath := path + ".stamp"

	binDir := filepath.Dir(path)
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if have, err := os.ReadFile(stampPath); err == nil && string(have) == stamp {
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
	}

	// go build does not overwrite a file that is not a binary: build into a fresh directory beside
	// the binary, then rename.
	tmpDir, err := os.MkdirTemp(binDir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmpDir)
	tmpPath := filepath.Join(tmpDir, filepath.Base(path))
	start := time.Now()
	cmd := exec.Command("go", slices.Concat([]string{"build"}, flags, []string{"-o", tmpPath, pkg})...)
	cmd.Dir, cmd.Env = modDir, ToolEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", pkg, modDir, err, out)
	}
	t.Logf("built %s in %v", pkg, time.Since(start).Round(time.Second))
	if err := os.Rename(tmpPath, path); err != nil {
		return "", err
	}
	return path, writeFileAtomic(stampPath, []byte(stamp))
}

// RepoRoot walks up from the working directory to the directory whose go.mod declares RootModule.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if modulePath(filepath.Join(dir, "go.mod")) == RootModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", RootModule)
		}
		dir = parent
	}
}

// modulePath returns the module path that the go.mod file at path declares, or "" when there is none.
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

// lockFile takes an exclusive flock on path, creating it, and returns the function that releases it.
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
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
