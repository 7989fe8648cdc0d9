//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

// Node is a loaded fast path; outside Linux on a little-endian machine there is none.
type Node struct{}

// Probe returns ErrNotSupported outside Linux on a little-endian machine.
func Probe() error { return ErrNotSupported }

// Load returns ErrNotSupported outside Linux on a little-endian machine.
func Load(Options) (*Node, error) { return nil, ErrNotSupported }

// Open returns ErrNotSupported outside Linux on a little-endian machine.
func Open(string) (*Node, error) { return nil, ErrNotSupported }

// Unload returns ErrNotSupported outside Linux on a little-endian machine.
func Unload(string) error { return ErrNotSupported }

// NetNSCookie returns ErrNotSupported outside Linux on a little-endian machine.
func NetNSCookie(string) (uint64, error) { return 0, ErrNotSupported }

// NetNSUserNamespaced returns ErrNotSupported outside Linux on a little-endian machine.
func NetNSUserNamespaced(string) (bool, error) { return false, ErrNotSupported }

// OwnerIDs returns ErrNotSupported outside Linux on a little-endian machine.
func OwnerIDs() (string, error) { return "", ErrNotSupported }

// AddPod returns ErrNotSupported outside Linux on a little-endian machine.
func (*Node) AddPod(Pod) error { return ErrNotSupported }

// RemovePod returns ErrNotSupported outside Linux on a little-endian machine.
func (*Node) RemovePod(uint64) error { return ErrNotSupported }

// Pods returns ErrNotSupported outside Linux on a little-endian machine.
func (*Node) Pods() ([]uint64, error) { return nil, ErrNotSupported }

// Stats returns ErrNotSupported outside Linux on a little-endian machine.
func (*Node) Stats() (Stats, error) { return Stats{}, ErrNotSupported }

// Close does nothing.
func (*Node) Close() error { return nil }
