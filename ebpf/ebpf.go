package ebpf

import (
	"errors"
	"log/slog"
	"strings"
)

// DefaultPinDir is where Load pins the maps and links of a node when Options.PinDir is empty.
const DefaultPinDir = "/sys/fs/bpf/shunt"

// Errors.
var (
	// ErrNotSupported is returned on systems without the kernel features the fast path needs,
	// and always outside Linux on little-endian machines (the programs are compiled for bpfel).
	ErrNotSupported = errors.New("eBPF fast path not supported")
	// ErrNotLoaded is returned by Open when nothing is loaded at the pin directory.
	ErrNotLoaded = errors.New("eBPF fast path not loaded")
)

// MissingError names each kernel feature Probe found missing.
type MissingError struct {
	Missing []string
}

func (e *MissingError) Error() string {
	return "eBPF fast path: missing " + strings.Join(e.Missing, ", ")
}

// Is makes errors.Is(err, ErrNotSupported) true for a *MissingError.
func (e *MissingError) Is(target error) bool { return target == ErrNotSupported }

// Options configures Load.
type Options struct {
	// Cgroup is the cgroup v2 directory the programs attach to; they see the sockets of every
	// process in it and below. Empty means the root of the first cgroup2 mount in /proc/mounts.
	Cgroup string
	// PinDir is the bpffs directory the maps and links are pinned in; its parent must be on a
	// bpffs (Load mounts one at /sys/fs/bpf when none is). Empty means DefaultPinDir.
	PinDir string
	// Logger receives what Load and Unload do; nil discards it.
	Logger *slog.Logger
}

// Stats are the fast path's counters since Load, summed over CPUs.
type Stats struct {
	// ConnectsRedirected counts connect(2) calls rewritten to the proxy (or the DNS proxy).
	ConnectsRedirected uint64
	// SocketsPaired counts sockets put in the socket hash (each app↔proxy connection has two).
	SocketsPaired uint64
	// MessagesRedirected and BytesRedirected count sendmsg(2) calls (and their bytes) that sk_msg
	// moved to the peer socket.
	MessagesRedirected uint64
	BytesRedirected    uint64
	// RedirectMisses counts messages of a paired socket whose peer was not in the socket hash;
	// the socket then sends through TCP for good, counted in MessagesFallback.
	RedirectMisses   uint64
	MessagesFallback uint64
	// OrigDstAnswered counts SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST answers.
	OrigDstAnswered uint64
	// PeerNamesAnswered counts getpeername(2) calls on redirected sockets.
	PeerNamesAnswered uint64
	// DNSRedirected counts UDP datagrams and UDP connect(2) calls rewritten to the DNS proxy (TCP
	// DNS is counted in ConnectsRedirected); DNSAnswered counts the DNS proxy's replies shown as
	// coming from the server the app asked.
	DNSRedirected uint64
	DNSAnswered   uint64
	// Pods is the number of pods registered.
	Pods int
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
