//go:build !linux || !(amd64 || arm64 || loong64 || ppc64le || riscv64)

package exectrace

// Tracer is a running exec tracer; there is none here.
type Tracer struct{}

// Start returns ErrNotSupported outside Linux on a 64-bit little-endian machine.
func Start() (*Tracer, error) { return nil, ErrNotSupported }

// Stop returns ErrNotSupported.
func (*Tracer) Stop() ([]Exec, error) { return nil, ErrNotSupported }
