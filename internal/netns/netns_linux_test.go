package netns_test

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/testutil"
)

// current returns the inode of the calling thread's network namespace.
func current(t *testing.T) uint64 {
	t.Helper()
	fi, err := os.Stat("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestDoEmptyPathRunsHere(t *testing.T) {
	want := errors.New("from fn")
	ran := false
	if err := netns.Do("", func() error { ran = true; return want }); !errors.Is(err, want) || !ran {
		t.Fatalf("Do(\"\"): ran %v, err %v; want ran and %v", ran, err, want)
	}
}

func TestDoEntersNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	fi, err := os.Stat(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := fi.Sys().(*syscall.Stat_t).Ino
	var got uint64
	if err := netns.Do(n.Path(), func() error { got = current(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("fn ran in netns inode %d, want %d", got, want)
	}
}

func TestDoMissingPath(t *testing.T) {
	if err := netns.Do("/nonexistent/netns", func() error { t.Error("fn ran"); return nil }); err == nil {
		t.Error("Do of a missing path: nil error")
	}
}
