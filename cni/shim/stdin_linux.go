package shim

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// restoreStdin makes stdin a memory file holding data, read from its start, so that the standalone
// plugin reads the configuration the runtime wrote.
func restoreStdin(data []byte) error {
	fd, err := unix.MemfdCreate("cni-stdin", 0)
	if err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cni-stdin")
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	if err := unix.Dup2(fd, 0); err != nil {
		return fmt.Errorf("stdin for the standalone plugin: %w", err)
	}
	return nil
}
