//go:build !linux

package shim

import "errors"

// restoreStdin needs Linux's memfd; CNI plugins run on Linux only.
func restoreStdin([]byte) error { return errors.New("the standalone plugin runs on Linux only") }
