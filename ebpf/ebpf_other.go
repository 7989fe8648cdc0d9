//go:build !linux

package ebpf

// Node is a loaded fast path; outside Linux there is none.
type Node struct{}

// Probe returns ErrNotSupported outside Linux.
func Probe() error { return ErrNotSupported }

// Load returns ErrNotSupported outside Linux.
func Load(Options) (*Node, error) { return nil, ErrNotSupported }

// Open returns ErrNotSupported outside Linux.
func Open(string) (*Node, error) { return nil, ErrNotSupported }

// Unload returns ErrNotSupported outside Linux.
func Unload(string) error { return ErrNotSupported }

// NetNSCookie returns ErrNotSupported outside Linux.
func NetNSCookie(string) (uint64, error) { return 0, ErrNotSupported }

// AddPod returns ErrNotSupported outside Linux.
func (*Node) AddPod(Pod) error { return ErrNotSupported }

// RemovePod returns ErrNotSupported outside Linux.
func (*Node) RemovePod(uint64) error { return ErrNotSupported }

// Pods returns ErrNotSupported outside Linux.
func (*Node) Pods() ([]uint64, error) { return nil, ErrNotSupported }

// Stats returns ErrNotSupported outside Linux.
func (*Node) Stats() (Stats, error) { return Stats{}, ErrNotSupported }

// Close does nothing outside Linux.
func (*Node) Close() error { return nil }
