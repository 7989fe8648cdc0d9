package kube

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// enterNetNS moves the calling thread into the network namespace at path.
// The caller has locked its goroutine to the thread and never unlocks it,
// so the Go runtime retires the thread instead of reusing it elsewhere.
func enterNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}
