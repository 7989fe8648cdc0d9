//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Unload detaches every program of the node pinned at pinDir (DefaultPinDir when empty) and
// removes its pins and the directory (an error if the directory holds anything else). Nothing of
// the node is left once the last file descriptor of its maps (a Node not yet closed) is closed;
// with none, nothing is left at return. Unloading what is not loaded is not an error.
func Unload(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Lstat(pinDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	unlock, err := lockDir(filepath.Dir(pinDir))
	if err != nil {
		return err
	}
	defer unlock()
	return unload(pinDir, logger(nil))
}

func unload(pinDir string, log *slog.Logger) error {
	var errs []error
	for _, p := range cgroupPrograms {
		path := filepath.Join(pinDir, linkPinPrefix+p.name)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open link %s: %w", p.name, err))
			continue
		}
		// Detach even while other processes hold the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p.name, err))
		}
		errs = append(errs, l.Unpin(), l.Close())
		log.Debug("detached", "program", p.name)
	}
	errs = append(errs, detachSkMsg(pinDir))
	// Only our pins: a directory that holds anything else is reported, not emptied.
	for _, name := range pinNames() {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unload %s: %w", pinDir, err)
	}
	log.Info("eBPF fast path unloaded", "pin_dir", pinDir)
	return nil
}

// detachSkMsg detaches the sk_msg program from the pinned socket hash, if both are there.
func detachSkMsg(pinDir string) error {
	prog, err := cebpf.LoadPinnedProgram(filepath.Join(pinDir, progPinPrefix+redirectProgShuntSkMsg), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open program %s: %w", redirectProgShuntSkMsg, err)
	}
	defer prog.Close()
	m, err := cebpf.LoadPinnedMap(filepath.Join(pinDir, redirectMapShuntSockhash), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open map %s: %w", redirectMapShuntSockhash, err)
	}
	defer m.Close()
	err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: cebpf.AttachSkMsgVerdict})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach %s: %w", redirectProgShuntSkMsg, err)
	}
	return nil
}
