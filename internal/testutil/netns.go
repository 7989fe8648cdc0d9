package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/shuntmesh/shunt/internal/netns"
)

var netnsSeq atomic.Int64

// NetNS is a named network namespace (as `ip netns add` makes it) that is
// deleted when the test that made it ends. Commands run inside it through
// `ip netns exec`, so nothing touches the namespace the tests run in.
type NetNS struct {
	// Name is the namespace's name under /run/netns.
	Name string
	// LockFile is this namespace's own xtables lock (XTABLES_LOCKFILE): the
	// legacy tables it guards are per namespace, and parallel tests must not
	// fail on each other's lock.
	LockFile string
}

// NewNetNS creates a fresh network namespace with lo up and deletes it when
// t ends.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	name := fmt.Sprintf("shunt-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	n := &NetNS{Name: name, LockFile: filepath.Join(t.TempDir(), "xtables.lock")}
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Path returns the namespace's bind mount, for nsenter and setns(2).
func (n *NetNS) Path() string { return filepath.Join("/run/netns", n.Name) }

// Do runs fn on a locked OS thread inside n (netns.Do): sockets fn opens and
// processes it starts belong to n. The calling thread stays where it is.
func (n *NetNS) Do(fn func() error) error { return netns.Do(n.Path(), fn) }

// Cred is the identity a process runs as: real and effective uid and gid,
// and no supplementary groups.
type Cred struct {
	UID, GID int
}

func (c Cred) String() string { return fmt.Sprintf("uid %d gid %d", c.UID, c.GID) }

// Command returns a command that runs argv inside n, as cred when cred is
// not nil (root otherwise). Its environment is the test's plus
// XTABLES_LOCKFILE; append to Env for more.
func (n *NetNS) Command(cred *Cred, argv ...string) *exec.Cmd {
	args := []string{"netns", "exec", n.Name}
	if cred != nil {
		args = append(args, "setpriv",
			"--reuid="+strconv.Itoa(cred.UID), "--regid="+strconv.Itoa(cred.GID), "--clear-groups", "--")
	}
	cmd := exec.Command("ip", append(args, argv...)...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+n.LockFile)
	return cmd
}

// AgentCommand returns a command that runs argv as root in n's network namespace only, in the test's
// mount namespace (nsenter --net, where ip netns exec makes a mount namespace of its own): mounts
// made later elsewhere, such as a container runtime's bind mounts of pods' namespaces, are visible to
// it, as they are to a node agent whose /var/run/netns is mounted with HostToContainer propagation.
func (n *NetNS) AgentCommand(argv ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--"}, argv...)...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+n.LockFile)
	return cmd
}

// Exec runs argv inside n as cred (root when nil) with env added to the
// environment and returns its standard output; a failure's error carries
// standard error.
func (n *NetNS) Exec(cred *Cred, env []string, argv ...string) ([]byte, error) {
	cmd := n.Command(cred, argv...)
	cmd.Env = append(cmd.Env, env...)
	return output(cmd)
}

// Run runs argv inside n as root and returns its standard output. It fails
// t on error.
func (n *NetNS) Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := n.Exec(nil, nil, argv...)
	if err != nil {
		t.Fatalf("in %s: %v", n.Name, err)
	}
	return string(out)
}

func output(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

var staleName = regexp.MustCompile(`^shunt-(\d+)-\d+$`)

// RemoveStaleNetNS deletes the namespaces NewNetNS made in test processes
// that no longer run (killed, or timed out before their cleanups ran), after
// killing the processes left inside them. Call it from TestMain.
func RemoveStaleNetNS() error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", m[1])); err == nil {
			continue // its test process still runs
		}
		out, err := exec.Command("ip", "netns", "pids", e.Name()).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("ip netns pids %s: %w", e.Name(), err))
			continue
		}
		for _, field := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(field); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", e.Name(), err, out))
		}
	}
	return errors.Join(errs...)
}
