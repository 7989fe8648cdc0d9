//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes sure dir is on a bpffs, mounting one when dir is /sys/fs/bpf.
func ensureBPFFS(dir string, log *slog.Logger) error {
	var st unix.Statfs_t
	err := unix.Statfs(dir, &st)
	if err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if filepath.Clean(dir) != "/sys/fs/bpf" {
		if err != nil {
			return fmt.Errorf("pin directory parent %s: %w", dir, err)
		}
		return fmt.Errorf("pin directory parent %s is not on a bpf file system", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	log.Info("mounted bpffs", "path", dir)
	return nil
}

// lockDir takes an exclusive flock on dir, serialising Load and Unload between processes.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// cgroupID returns the id of the cgroup v2 directory path (its inode number).
func cgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not a cgroup v2 directory", path)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return s.Ino, nil
}
