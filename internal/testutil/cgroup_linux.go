package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroup is a child cgroup v2 made for one test: the cgroup BPF programs
// under test are attached to it, and the processes that must meet them are
// started inside it. It is removed, after killing what still runs in it,
// when the test that made it ends.
type Cgroup struct {
	// Path is the cgroup's directory in the cgroup2 mount.
	Path string
	// ID is the cgroup's id, as bpf_get_current_cgroup_id and BPF link
	// info report it: the inode number of its directory.
	ID uint64

	dir *os.File // open for CLONE_INTO_CGROUP and BPF_PROG_QUERY

	mu      sync.Mutex
	removed bool
}

// CgroupRemoveTimeout bounds how long Remove waits for the killed
// processes of a cgroup to leave it.
const CgroupRemoveTimeout = 10 * time.Second

var (
	cgroupSeq       int64
	cgroupSeqMu     sync.Mutex
	cgroupStaleOnce sync.Once
)

// NewCgroup creates a fresh cgroup v2 directory, named uniquely for this
// process, under the cgroup2 mount that /proc/mounts lists, and removes it
// when t ends (see Remove). Cgroups that earlier test processes left behind
// (killed before their cleanups ran) are removed first.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	cgroupStaleOnce.Do(func() {
		if err := removeStaleCgroups(mount); err != nil {
			t.Logf("remove stale cgroups: %v", err)
		}
	})
	cgroupSeqMu.Lock()
	cgroupSeq++
	name := fmt.Sprintf("shunt-%d-%d", os.Getpid(), cgroupSeq)
	cgroupSeqMu.Unlock()
	path := filepath.Join(mount, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	c := &Cgroup{Path: path}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	if c.dir, err = os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(c.dir.Fd()), &st); err != nil {
		t.Fatalf("stat cgroup: %v", err)
	}
	c.ID = st.Ino
	return c
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted, from
// /proc/mounts: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on
// a hybrid one.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return unescapeMountPath(fields[1]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read /proc/mounts: %w", err)
	}
	return "", errors.New("no cgroup2 file system in /proc/mounts")
}

// unescapeMountPath undoes the octal escapes (\040 for a space) of a path
// in /proc/mounts.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// FD returns a descriptor of the cgroup's directory, valid until Remove:
// the target of BPF cgroup attachments and queries.
func (c *Cgroup) FD() int { return int(c.dir.Fd()) }

// Place makes cmd start inside c: the child is cloned straight into the
// cgroup (clone3 with CLONE_INTO_CGROUP), so nothing it does runs outside
// it, and what it executes (ip netns exec, setpriv, the command) inherits
// it. It returns cmd.
func (c *Cgroup) Place(cmd *exec.Cmd) *exec.Cmd {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = c.FD()
	return cmd
}

// Exec runs argv inside n and c as cred (root when nil) and returns its
// standard output; a failure's error carries standard error.
func (c *Cgroup) Exec(n *NetNS, cred *Cred, argv ...string) ([]byte, error) {
	return output(c.Place(n.Command(cred, argv...)))
}

// Start is NetNS.Start inside c.
func (c *Cgroup) Start(t testing.TB, n *NetNS, cred *Cred, argv ...string) {
	t.Helper()
	n.StartCmd(t, c.Place(n.Command(cred, argv...)))
}

// Procs returns the processes in c.
func (c *Cgroup) Procs() ([]int, error) {
	data, err := os.ReadFile(filepath.Join(c.Path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("cgroup.procs: %w", err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Remove kills the processes still in c and removes its directory; it is
// done once, and a second call returns nil. The BPF programs attached to c
// do not keep it: the kernel detaches them when it goes.
func (c *Cgroup) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true
	if c.dir != nil {
		defer c.dir.Close()
	}
	return removeCgroup(c.Path)
}

// removeCgroup kills everything in the cgroup at path and removes it. A
// cgroup with processes in it cannot be removed (EBUSY) and SIGKILL takes
// effect asynchronously, so rmdir is retried until CgroupRemoveTimeout.
func removeCgroup(path string) error {
	kill := func() error {
		// cgroup.kill (Linux 5.14) kills every process, also those forking
		// meanwhile; cgroup.procs is the fallback.
		err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	}
	deadline := time.Now().Add(CgroupRemoveTimeout)
	backoff := time.Millisecond
	for {
		err := unix.Rmdir(path)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("rmdir %s: %w", path, err)
		}
		if kerr := kill(); kerr != nil && !errors.Is(kerr, fs.ErrNotExist) {
			return fmt.Errorf("kill processes in %s: %w", path, kerr)
		}
		if time.Now().After(deadline) {
			procs, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			return fmt.Errorf("rmdir %s: still busy after %v (processes: %q)", path, CgroupRemoveTimeout,
				strings.Fields(string(procs)))
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// removeStaleCgroups removes the cgroups NewCgroup made in test processes
// that no longer run.
func removeStaleCgroups(mount string) error {
	entries, err := os.ReadDir(mount)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", m[1])); err == nil {
			continue // its test process still runs
		}
		if err := removeCgroup(filepath.Join(mount, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
