// Package exectrace records, with eBPF programs on the kernel's exec tracepoints, every program that
// processes named shunt* try to execute and every start of a program named shunt*: the proof that
// neither shunt nor shunt-init runs an iptables, nft or ip binary. The e2e suite traces its whole run
// with it. A process's name (comm) is the base name of the file it executed, up to 15 bytes; a forked
// child keeps its parent's name until it executes something, so the exec calls of a shunt process's
// children are recorded as shunt's.
package exectrace

import (
	"errors"
	"fmt"
)

// ErrNotSupported is returned by Start where the tracer cannot run: outside Linux, or on a machine whose
// tracepoint layout the programs do not know (they are written for 64-bit little-endian ones).
var ErrNotSupported = errors.New("not supported")

// Prefix is the name prefix of the processes whose exec calls are recorded.
const Prefix = "shunt"

// Kind says which tracepoint recorded an Exec.
type Kind uint32

const (
	// KindCall is an execve or execveat call made by a process named shunt* (recorded at the call's
	// entry, whether it then succeeds or not): Comm is the caller's name, Filename the path it passed.
	KindCall Kind = iota
	// KindStart is the start of a program named shunt* (a successful exec): Comm is its new name,
	// Filename the path it was executed as.
	KindStart
)

// String returns "call" or "start".
func (k Kind) String() string {
	switch k {
	case KindCall:
		return "call"
	case KindStart:
		return "start"
	}
	return fmt.Sprintf("Kind(%d)", uint32(k))
}

// Exec is one recorded exec.
type Exec struct {
	Kind     Kind
	PID      uint32 // the process (thread group) id, in the initial PID namespace
	Comm     string
	Filename string
}

// String describes e for a report: "call: comm shunt pid 42 filename /usr/sbin/iptables-restore".
func (e Exec) String() string {
	return fmt.Sprintf("%s: comm %s pid %d filename %s", e.Kind, e.Comm, e.PID, e.Filename)
}
