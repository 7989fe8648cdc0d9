//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

// The splice stall (issue 16, item 5): which socket-map redirect modes leave bytes that a receiver
// reading with splice(2) can consume (TestSpliceModes, TestSpliceGoRelay), what each costs
// (BenchmarkSockmapModes), and how to see bytes a splice reader leaves behind (psockBacklogs with
// sock_diag, stalledSockets with FIONREAD). The programs are built here with the asm package
// (redirect.c is not touched), so that the tests need no compiler.
//
// What the kernel does (net/ipv4/tcp_bpf.c, net/core/skmsg.c, net/ipv4/tcp.c):
//
//   - A socket in a socket map gets a psock and the tcp_bpf proto: recvmsg is tcp_bpf_recvmsg
//     (or tcp_bpf_recvmsg_parser with an sk_skb verdict program), which reads psock->ingress_msg
//     and then sk_receive_queue; sock_is_readable (poll) and FIONREAD (tcp_bpf_ioctl) see
//     ingress_msg too. Nothing replaces splice_read: tcp_splice_read → tcp_read_sock reads
//     sk_receive_queue only, and waits (sk_wait_data) for that queue's tail to change.
//   - bpf_msg_redirect_hash with BPF_F_INGRESS (bpf_tcp_ingress) and bpf_sk_redirect_hash with
//     BPF_F_INGRESS, like an sk_skb verdict's SK_PASS (sk_psock_skb_ingress_self), queue the bytes
//     on the target's psock->ingress_msg: never on sk_receive_queue.
//   - Without BPF_F_INGRESS the bytes are sent by the target socket (tcp_bpf_push /
//     skb_send_sock): through TCP to the target's peer, where they land in sk_receive_queue.
//
// So a splice reader can consume only bytes that went through a TCP stack, and for an app↔proxy
// pair the only socket whose sending reaches the proxy through TCP is the app's own: egress to the
// peer sends the bytes back to the sender.
//
// What the stalled bytes look like from outside, on this kernel (6.18): FIONREAD on the socket
// counts them (and, on a socket-map socket, only them: not sk_receive_queue); sock_diag shows
// Recv-Q 0 (they never entered TCP) with skmem r (sk_rmem_alloc) holding them. A tracing program
// (fentry on tcp_splice_read, or a bpf_iter over the socket hash) would name the splice reader
// itself, but on these machines loading any BPF_PROG_TYPE_TRACING program, even a bare fentry or
// iterator, fails with EPERM (they run lockdown=confidentiality and the bpf LSM): a detector for
// the agent must not need one.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
)

// spliceWait bounds every wait for bytes: a receiver that has not got them by then has stalled.
// Loopback delivers in microseconds.
const spliceWait = time.Second

// stallInterval is how long unread bytes must stay queued for stalledSockets in the tests.
const stallInterval = 100 * time.Millisecond

// splicePayload is how much is sent per step, in spliceChunk writes.
const (
	splicePayload = 16 << 10
	spliceChunk   = 4 << 10
)

// kernelOffsets are the context and kernel struct offsets the programs use, from the kernel's BTF.
type kernelOffsets struct {
	msgRemotePort uint32 // sk_msg_md.remote_port
	skbRemotePort uint32 // __sk_buff.remote_port
}

var (
	offsetsOnce sync.Once
	offsets     kernelOffsets
	offsetsErr  error
)

func loadOffsets(t testing.TB) kernelOffsets {
	t.Helper()
	offsetsOnce.Do(func() {
		spec, err := btf.LoadKernelSpec()
		if err != nil {
			offsetsErr = fmt.Errorf("kernel BTF: %w", err)
			return
		}
		for _, f := range []struct {
			dst       *uint32
			typ, path string
		}{
			{&offsets.msgRemotePort, "sk_msg_md", "remote_port"},
			{&offsets.skbRemotePort, "__sk_buff", "remote_port"},
		} {
			var s *btf.Struct
			if err := spec.TypeByName(f.typ, &s); err != nil {
				offsetsErr = fmt.Errorf("struct %s: %w", f.typ, err)
				return
			}
			off, err := fieldOffset(s, f.path)
			if err != nil {
				offsetsErr = fmt.Errorf("struct %s: %w", f.typ, err)
				return
			}
			*f.dst = off.Bytes()
		}
	})
	if offsetsErr != nil {
		t.Skip(offsetsErr)
	}
	return offsets
}

// fieldOffset returns the offset of the dotted path of members in typ.
func fieldOffset(typ btf.Type, path string) (btf.Bits, error) {
	var total btf.Bits
	for _, name := range strings.Split(path, ".") {
		off, m, ok := findMember(typ, name)
		if !ok {
			return 0, fmt.Errorf("no member %s in %s", name, path)
		}
		total += off
		typ = m.Type
	}
	return total, nil
}

// findMember finds name among the members of typ (a struct or union) and of their anonymous
// structs and unions.
func findMember(typ btf.Type, name string) (btf.Bits, btf.Member, bool) {
	var ms []btf.Member
	switch c := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		ms = c.Members
	case *btf.Union:
		ms = c.Members
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Offset, m, true
		}
		if m.Name == "" {
			if off, inner, ok := findMember(m.Type, name); ok {
				return m.Offset + off, inner, true
			}
		}
	}
	return 0, btf.Member{}, false
}

// redirectToPeer returns instructions that redirect the context in R6 to the socket that m holds
// under the context's remote port (host byte order) with fn (bpf_msg_redirect_hash or
// bpf_sk_redirect_hash), and return its verdict: SK_DROP when the map holds no such socket, so
// that a miss is never mistaken for bytes that went through TCP.
func redirectToPeer(m *cebpf.Map, remotePortOff uint32, fn asm.BuiltinFunc, flags int32) asm.Instructions {
	return asm.Instructions{
		// remote_port is the network-order port in the upper half of the u32 on little-endian
		// machines (the only ones this file builds for).
		asm.LoadMem(asm.R2, asm.R6, int16(remotePortOff), asm.Word),
		asm.RSh.Imm32(asm.R2, 16),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -4),
		asm.Mov.Imm(asm.R4, flags),
		fn.Call(),
		asm.Return(),
	}
}

// skMsgSpec is an sk_msg verdict program: with apply or cork, it first calls bpf_msg_apply_bytes
// or bpf_msg_cork_bytes; then it passes the message to TCP (pass) or redirects it to the peer
// with flags.
type skMsgSpec struct {
	pass        bool
	flags       int32
	apply, cork int32
}

func (s skMsgSpec) program(t testing.TB, m *cebpf.Map) *cebpf.Program {
	t.Helper()
	off := loadOffsets(t)
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	if s.apply != 0 {
		insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), asm.Mov.Imm(asm.R2, s.apply), asm.FnMsgApplyBytes.Call())
	}
	if s.cork != 0 {
		insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), asm.Mov.Imm(asm.R2, s.cork), asm.FnMsgCorkBytes.Call())
	}
	if s.pass {
		insns = append(insns, asm.Mov.Imm(asm.R0, 1), asm.Return())
	} else {
		insns = append(insns, redirectToPeer(m, off.msgRemotePort, asm.FnMsgRedirectHash, s.flags)...)
	}
	return newProgram(t, &cebpf.ProgramSpec{
		Name: "splice_sk_msg", Type: cebpf.SkMsg, License: "Dual BSD/GPL", Instructions: insns,
	})
}

// skSKBSpec is an sk_skb verdict program attached as attach (with a parser that takes whole skbs
// for BPF_SK_SKB_STREAM_VERDICT with parser): it passes the skb (pass) or redirects it to the
// socket held under its remote port with flags.
type skSKBSpec struct {
	attach cebpf.AttachType
	parser bool
	pass   bool
	flags  int32
}

func newProgram(t testing.TB, spec *cebpf.ProgramSpec) *cebpf.Program {
	t.Helper()
	p, err := cebpf.NewProgram(spec)
	if errors.Is(err, cebpf.ErrNotSupported) {
		t.Skipf("program %s: %v", spec.Name, err)
	}
	if err != nil {
		t.Fatalf("program %s: %+v", spec.Name, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// newSockHash returns a socket hash keyed by a u32 (a socket's local port).
func newSockHash(t testing.TB) *cebpf.Map {
	t.Helper()
	m, err := cebpf.NewMap(&cebpf.MapSpec{Name: "splice_hash", Type: cebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if errors.Is(err, cebpf.ErrNotSupported) {
		t.Skipf("socket hash: %v", err)
	}
	if err != nil {
		t.Fatalf("socket hash: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func attachToMap(t testing.TB, m *cebpf.Map, p *cebpf.Program, at cebpf.AttachType) {
	t.Helper()
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: p, Attach: at}); err != nil {
		if errors.Is(err, cebpf.ErrNotSupported) {
			t.Skipf("attach %s: %v", at, err)
		}
		t.Fatalf("attach %s: %v", at, err)
	}
}

func (s skMsgSpec) attach(t testing.TB, m *cebpf.Map) {
	attachToMap(t, m, s.program(t, m), cebpf.AttachSkMsgVerdict)
}

func (s skSKBSpec) attachTo(t testing.TB, m *cebpf.Map) {
	t.Helper()
	off := loadOffsets(t)
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	if s.pass {
		insns = append(insns, asm.Mov.Imm(asm.R0, 1), asm.Return())
	} else {
		insns = append(insns, redirectToPeer(m, off.skbRemotePort, asm.FnSkRedirectHash, s.flags)...)
	}
	if s.parser {
		parser := newProgram(t, &cebpf.ProgramSpec{
			Name: "splice_parser", Type: cebpf.SkSKB, License: "Dual BSD/GPL",
			Instructions: asm.Instructions{asm.LoadMem(asm.R0, asm.R1, 0, asm.Word), asm.Return()}, // skb->len
		})
		attachToMap(t, m, parser, cebpf.AttachSkSKBStreamParser)
	}
	verdict := newProgram(t, &cebpf.ProgramSpec{
		Name: "splice_verdict", Type: cebpf.SkSKB, License: "Dual BSD/GPL", Instructions: insns,
	})
	attachToMap(t, m, verdict, s.attach)
}

// tcpEnd is one blocking socket of a loopback TCP connection.
type tcpEnd struct {
	fd   int
	port uint32 // local port
}

// newConn returns both ends of a fresh 127.0.0.1 TCP connection in ns: the connecting one and the
// accepted one, blocking sockets closed when t ends.
func newConn(t testing.TB, ns *testutil.NetNS) (tcpEnd, tcpEnd) {
	t.Helper()
	var a, b tcpEnd
	err := ns.Do(func() error {
		l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(l)
		if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := unix.Listen(l, 1); err != nil {
			return err
		}
		la, err := unix.Getsockname(l)
		if err != nil {
			return err
		}
		if a.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(a.fd) })
		if err := unix.Connect(a.fd, la); err != nil {
			return err
		}
		if b.fd, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC); err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(b.fd) })
		for _, e := range []*tcpEnd{&a, &b} {
			sa, err := unix.Getsockname(e.fd)
			if err != nil {
				return err
			}
			e.port = uint32(sa.(*unix.SockaddrInet4).Port)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("loopback connection: %v", err)
	}
	return a, b
}

// put puts s in m under key.
func put(t testing.TB, m *cebpf.Map, key uint32, s tcpEnd) {
	t.Helper()
	if err := m.Update(key, uint64(s.fd), cebpf.UpdateAny); err != nil {
		t.Fatalf("socket hash update %d: %v", key, err)
	}
}

func payload(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

func sendAll(t testing.TB, fd int, p []byte) {
	t.Helper()
	for len(p) > 0 {
		n := min(len(p), spliceChunk)
		w, err := unix.Write(fd, p[:n])
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		p = p[w:]
	}
}

// setRcvTimeout makes every blocking read and splice of fd give up with EAGAIN after d: the
// bounded wait that detects a stall (tcp_splice_read and tcp_bpf_recvmsg both honour SO_RCVTIMEO).
func setRcvTimeout(t testing.TB, fd int, d time.Duration) {
	t.Helper()
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatalf("SO_RCVTIMEO: %v", err)
	}
}

// readN reads up to n bytes from fd with read(2) until it has them or a read times out.
func readN(fd, n int) ([]byte, error) {
	buf := make([]byte, n)
	got := 0
	for got < n {
		r, err := unix.Read(fd, buf[got:])
		if errors.Is(err, unix.EINTR) {
			continue // a signal (Go's preemption): SO_RCVTIMEO makes reads fail with EINTR
		}
		if err != nil {
			return buf[:got], err
		}
		if r == 0 {
			return buf[:got], io.EOF
		}
		got += r
	}
	return buf, nil
}

// spliceN moves up to n bytes from fd into a pipe with splice(2) and reads them out of it, until
// it has them or a splice times out.
func spliceN(t testing.TB, fd, n int) ([]byte, error) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatalf("pipe: %v", err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	var out []byte
	for len(out) < n {
		s, err := unix.Splice(fd, nil, p[1], nil, n-len(out), unix.SPLICE_F_MOVE)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return out, err
		}
		if s == 0 {
			return out, io.EOF
		}
		buf := make([]byte, s)
		if _, err := io.ReadFull(fdReader(p[0]), buf); err != nil {
			t.Fatalf("read pipe: %v", err)
		}
		out = append(out, buf...)
	}
	return out, nil
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) { return unix.Read(int(f), p) }

// readable reports whether poll(2) shows fd readable now.
func readable(t testing.TB, fd int) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return n > 0 && fds[0].Revents&unix.POLLIN != 0
}

func inq(t testing.TB, fd int) int {
	t.Helper()
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		t.Fatalf("FIONREAD: %v", err)
	}
	return n
}

// diagOf returns what sock_diag answers about s, in ns.
func diagOf(t testing.TB, ns *testutil.NetNS, s tcpEnd) diagSocket {
	t.Helper()
	var all []diagSocket
	err := ns.Do(func() (err error) {
		all, err = tcpDiag(unix.AF_INET)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		if uint32(d.Local.Port()) == s.port {
			return d
		}
	}
	t.Fatalf("sock_diag: no socket on port %d", s.port)
	return diagSocket{}
}

// spliceWiring is what a mode's socket hash holds: c1 (a1 → b1) is the connection the bytes are
// sent on, from a1; c2 (a2 → b2) is a second one that a mode may redirect to.
type spliceWiring struct {
	a1, b1, a2, b2 tcpEnd
}

// spliceMode is one way of moving a1's bytes with a socket map.
type spliceMode struct {
	name string
	// setup attaches the mode's programs to m and puts sockets in it; it returns the socket the
	// bytes land on and the sockets that must receive nothing.
	setup func(t testing.TB, m *cebpf.Map, w spliceWiring) (recv tcpEnd, quiet []tcpEnd)
	// splice is whether a splice(2) reader of recv gets the bytes on this kernel; read(2) always
	// does.
	splice bool
	// viaTCP: the bytes reach recv through a TCP receive path (an sk_skb program runs there).
	viaTCP bool
}

// splicePair: both ends of c1 in the hash, each under its own port; sk_msg looks up the peer
// under its remote port.
func splicePair(t testing.TB, m *cebpf.Map, w spliceWiring) {
	put(t, m, w.a1.port, w.a1)
	put(t, m, w.b1.port, w.b1)
}

var spliceModes = []spliceMode{
	{
		name: "tcp",
		setup: func(_ testing.TB, _ *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			return w.b1, nil
		},
		splice: true,
	},
	{
		// shunt_sk_msg today.
		name: "sk_msg/ingress",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skMsgSpec{flags: unix.BPF_F_INGRESS}.attach(t, m)
			splicePair(t, m, w)
			return w.b1, nil
		},
	},
	{
		name: "sk_msg/ingress+apply+cork",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skMsgSpec{flags: unix.BPF_F_INGRESS, apply: 2 * spliceChunk, cork: 2 * spliceChunk}.attach(t, m)
			splicePair(t, m, w)
			return w.b1, nil
		},
	},
	{
		// The program runs on every sendmsg but the bytes go through TCP: nothing gained.
		name: "sk_msg/pass+apply+cork",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skMsgSpec{pass: true, apply: 2 * spliceChunk, cork: 2 * spliceChunk}.attach(t, m)
			splicePair(t, m, w)
			return w.b1, nil
		},
		splice: true,
	},
	{
		// Egress of the peer is the peer sending: the bytes go back to the sender.
		name: "sk_msg/egress-to-peer",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skMsgSpec{}.attach(t, m)
			splicePair(t, m, w)
			return w.a1, []tcpEnd{w.b1}
		},
		splice: true,
	},
	{
		// A relay's bypass: a1's bytes leave through a2 and reach b2 through TCP; b1 (the proxy)
		// never sees them.
		name: "sk_msg/egress-to-other-conn",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skMsgSpec{}.attach(t, m)
			put(t, m, w.a1.port, w.a1)
			put(t, m, w.b1.port, w.a2) // a1's remote port names a2
			return w.b2, []tcpEnd{w.b1}
		},
		splice: true,
	},
	{
		// The receiver alone in the hash with a verdict program: bytes that came through TCP are
		// taken off sk_receive_queue (read_skb) and passed to ingress_msg.
		name: "sk_skb/stream_verdict/pass",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBStreamVerdict, pass: true}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			return w.b1, nil
		},
		viaTCP: true,
	},
	{
		name: "sk_skb/stream_parser+verdict/pass",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBStreamVerdict, parser: true, pass: true}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			return w.b1, nil
		},
		viaTCP: true,
	},
	{
		name: "sk_skb/verdict/pass",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBVerdict, pass: true}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			return w.b1, nil
		},
		viaTCP: true,
	},
	{
		// What b1 receives through TCP goes to b2's ingress_msg.
		name: "sk_skb/verdict/ingress-to-other-conn",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBVerdict, flags: unix.BPF_F_INGRESS}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			put(t, m, w.a1.port, w.b2) // b1's remote port names b2
			return w.b2, []tcpEnd{w.b1}
		},
	},
	{
		// What b1 receives through TCP is sent by a2, reaching b2 through TCP.
		name: "sk_skb/verdict/egress-to-other-conn",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBVerdict}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			put(t, m, w.a1.port, w.a2)
			return w.b2, []tcpEnd{w.b1}
		},
		splice: true,
	},
}

// TestSpliceModes documents, per redirect mode, whether a receiver that reads with splice(2) gets
// the bytes a1 sends, and asserts today's behaviour so that a kernel that changes it is noticed.
// In each mode a1 sends one payload, read at the receiving socket with read(2), then a second one,
// spliced there; a splice that times out must leave the bytes to read(2), and poll and FIONREAD
// show them (the hazard: readable, yet splice waits).
func TestSpliceModes(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	for _, mode := range spliceModes {
		t.Run(strings.ReplaceAll(mode.name, "/", "_"), func(t *testing.T) {
			m := newSockHash(t)
			var w spliceWiring
			w.a1, w.b1 = newConn(t, ns)
			w.a2, w.b2 = newConn(t, ns)
			recv, quiet := mode.setup(t, m, w)
			setRcvTimeout(t, recv.fd, spliceWait)

			p1 := payload(splicePayload, 1)
			sendAll(t, w.a1.fd, p1)
			got, err := readN(recv.fd, len(p1))
			if !bytes.Equal(got, p1) {
				t.Fatalf("read(2): %d of %d bytes (%v)", len(got), len(p1), err)
			}

			p2 := payload(splicePayload, 2)
			sendAll(t, w.a1.fd, p2)
			spliced, serr := spliceN(t, recv.fd, len(p2))
			// What is left once the splice has returned or given up: by then every byte has arrived.
			pollIn := readable(t, recv.fd)
			queued := inq(t, recv.fd)
			diag := diagOf(t, ns, recv)
			rest, rerr := readN(recv.fd, len(p2)-len(spliced))
			if !bytes.Equal(append(spliced, rest...), p2) {
				t.Fatalf("splice(2) got %d bytes (%v), then read(2) %d (%v): not the %d sent", len(spliced), serr, len(rest), rerr, len(p2))
			}
			t.Logf("%-36s splice %5d/%d (%v), then read(2) %5d; between: POLLIN %v, FIONREAD %d, Recv-Q %d, skmem r %d",
				mode.name, len(spliced), len(p2), serr, len(rest), pollIn, queued, diag.RQueue, diag.RmemAlloc)
			for _, q := range quiet {
				if readable(t, q.fd) {
					t.Errorf("socket on port %d is readable: bytes went there", q.port)
				}
			}

			if ok := len(spliced) == len(p2); ok != mode.splice {
				t.Errorf("splice(2) reader gets the bytes: %v, want %v (spliced %d of %d: %v)", ok, mode.splice, len(spliced), len(p2), serr)
			}
			if !mode.splice && len(spliced) == 0 {
				// The stall as an epoll reader sees it: readable, FIONREAD counts the bytes, and
				// splice(2) waits anyway.
				if !pollIn || queued != len(p2) {
					t.Errorf("stalled bytes: POLLIN %v, FIONREAD %d, want true, %d", pollIn, queued, len(p2))
				}
				// What sock_diag shows: bytes an sk_msg redirected never entered TCP (Recv-Q 0)
				// but are charged to the receive memory; bytes an sk_skb program took off TCP's
				// receive queue are still counted in Recv-Q (copied_seq has not moved).
				wantRQueue := 0
				if mode.viaTCP {
					wantRQueue = len(p2)
				}
				if int(diag.RQueue) != wantRQueue || diag.RmemAlloc < uint32(len(p2)) {
					t.Errorf("stalled bytes: Recv-Q %d, skmem r %d, want %d and at least %d", diag.RQueue, diag.RmemAlloc, wantRQueue, len(p2))
				}
				if !errors.Is(serr, unix.EAGAIN) {
					t.Errorf("stalled splice(2): %v, want EAGAIN after SO_RCVTIMEO", serr)
				}
			}
		})
	}
}

// psockSocket is a socket of a process that is in the socket hash.
type psockSocket struct {
	Pid, FD int
	Cookie  uint64
	// Queued is what FIONREAD answers on it: on this kernel tcp_bpf_ioctl counts the bytes on its
	// psock's ingress list (redirected to it, and only recvmsg reads them), not sk_receive_queue.
	Queued int
}

// hashCookies returns the cookies of the sockets in m, a socket hash with 8-byte values: a lookup
// from user space answers a socket's cookie.
func hashCookies(m *cebpf.Map) (map[uint64]bool, error) {
	cookies := map[uint64]bool{}
	var key []byte
	var cookie uint64
	it := m.Iterate()
	for it.Next(&key, &cookie) {
		cookies[cookie] = true
	}
	return cookies, it.Err()
}

// psockQueues returns the sockets of process pid whose cookie is in cookies, with what is queued
// on their psock's ingress list. It takes a copy of each socket descriptor with pidfd_getfd(2),
// which needs PTRACE_MODE_ATTACH over pid (CAP_SYS_PTRACE for the agent).
func psockQueues(pid int, cookies map[uint64]bool) ([]psockSocket, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []psockSocket
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		dup, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			continue // closed meanwhile
		}
		cookie, err := unix.GetsockoptUint64(dup, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err == nil && cookies[cookie] {
			var n int
			if n, err = unix.IoctlGetInt(dup, unix.SIOCINQ); err == nil {
				out = append(out, psockSocket{Pid: pid, FD: fd, Cookie: cookie, Queued: n})
			}
		}
		unix.Close(dup)
		if err != nil {
			return nil, fmt.Errorf("socket %d of %d: %w", fd, pid, err)
		}
	}
	return out, nil
}

// stalledSockets is the prototype of the agent's hazard check: the sockets of pid in the socket
// hash m whose psock ingress list holds bytes that nothing reads for interval (the same non-zero
// FIONREAD in two samples). A receiver that reads with recvmsg(2) empties the list as soon as it
// reads; one that reads with splice(2) never does. A receiver that does not read at all for
// interval also shows, so a report is "suspected", to be confirmed by the pod's owner (or by
// setting NoSockMsg and seeing the stall go).
func stalledSockets(m *cebpf.Map, pid int, interval time.Duration) ([]psockSocket, error) {
	cookies, err := hashCookies(m)
	if err != nil {
		return nil, err
	}
	first, err := psockQueues(pid, cookies)
	if err != nil {
		return nil, err
	}
	time.Sleep(interval)
	second, err := psockQueues(pid, cookies)
	if err != nil {
		return nil, err
	}
	var out []psockSocket
	for _, s := range second {
		for _, f := range first {
			if f.Cookie == s.Cookie && f.Queued == s.Queued && s.Queued > 0 {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// diagSocket is what sock_diag answers about an established TCP socket.
type diagSocket struct {
	Local, Remote netip.AddrPort
	Cookie        uint64
	// RQueue is rcv_nxt - copied_seq: what TCP's receive queue holds unread (ss's Recv-Q).
	RQueue uint32
	// RmemAlloc is sk_rmem_alloc (ss's skmem r): on this kernel it also counts the bytes queued
	// on the socket's psock ingress list.
	RmemAlloc uint32
}

// From linux/inet_diag.h and linux/sock_diag.h.
const (
	inetDiagSkMemInfo = 7  // INET_DIAG_SKMEMINFO
	sizeofInetDiagReq = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg = 72 // struct inet_diag_msg
)

// tcpDiag dumps the established TCP sockets of family in the calling thread's network namespace
// with sock_diag, as `ss -tnm` does.
func tcpDiag(family uint8) ([]diagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.SizeofNlMsghdr+sizeofInetDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1)
	r := req[unix.SizeofNlMsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = 1 << (inetDiagSkMemInfo - 1)
	ne.PutUint32(r[4:], 1<<unix.BPF_TCP_ESTABLISHED)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	var out []diagSocket
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				return nil, fmt.Errorf("sock_diag: %w", syscall.Errno(-int32(ne.Uint32(m.Data))))
			}
			if len(m.Data) < sizeofInetDiagMsg {
				return nil, fmt.Errorf("sock_diag: short message")
			}
			d := m.Data
			s := diagSocket{
				Cookie: ne.Uint64(d[44:]),
				RQueue: ne.Uint32(d[56:]),
			}
			addr := func(b []byte) netip.Addr {
				if d[0] == unix.AF_INET {
					return netip.AddrFrom4([4]byte(b[:4]))
				}
				return netip.AddrFrom16([16]byte(b[:16]))
			}
			s.Local = netip.AddrPortFrom(addr(d[8:24]), binary.BigEndian.Uint16(d[4:]))
			s.Remote = netip.AddrPortFrom(addr(d[24:40]), binary.BigEndian.Uint16(d[6:]))
			for a := d[sizeofInetDiagMsg:]; len(a) >= 4; {
				l := int(ne.Uint16(a))
				if l < 4 || l > len(a) {
					break
				}
				if ne.Uint16(a[2:]) == inetDiagSkMemInfo && l >= 8 {
					s.RmemAlloc = ne.Uint32(a[4+4*unix.SK_MEMINFO_RMEM_ALLOC:])
				}
				a = a[min((l+3)&^3, len(a)):]
			}
			out = append(out, s)
		}
	}
}

// psockBacklogs is the hazard check the agent can run in a pod's network namespace without
// touching the pod's processes: the established TCP sockets whose receive memory holds bytes that
// are not in TCP's receive queue (ss: Recv-Q 0, skmem r > 0), the same in two dumps interval
// apart. Such bytes sit on a psock ingress list, where recvmsg(2) finds them and splice(2) never
// does; a reader that uses recvmsg empties the list as soon as it reads. A receiver that does not
// read at all for interval also shows, so a report is a suspicion: the operator confirms it with
// the pod's owner, or sets NoSockMsg and watches the stall go.
func psockBacklogs(ns *testutil.NetNS, interval time.Duration) ([]diagSocket, error) {
	dump := func() ([]diagSocket, error) {
		var all []diagSocket
		err := ns.Do(func() error {
			for _, f := range []uint8{unix.AF_INET, unix.AF_INET6} {
				s, err := tcpDiag(f)
				if err != nil {
					return err
				}
				all = append(all, s...)
			}
			return nil
		})
		return all, err
	}
	first, err := dump()
	if err != nil {
		return nil, err
	}
	time.Sleep(interval)
	second, err := dump()
	if err != nil {
		return nil, err
	}
	var out []diagSocket
	for _, s := range second {
		if s.RQueue != 0 || s.RmemAlloc == 0 {
			continue
		}
		for _, f := range first {
			if f.Cookie == s.Cookie && f.RQueue == 0 && f.RmemAlloc == s.RmemAlloc {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// TestSpliceGoRelay: a Go relay whose io.Copy between two *net.TCPConn reads the proxy's socket
// with splice(2) stalls on bytes shunt's sk_msg mode (ingress redirect) sends it, where the same
// relay copying with read and write gets them; the detector names the splicing process and pod.
func TestSpliceGoRelay(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		relay func(dst, src *net.TCPConn) error
		stall bool
	}{
		{
			name: "io.Copy",
			relay: func(dst, src *net.TCPConn) error {
				_, err := io.Copy(dst, src) // dst.ReadFrom(src): splice(2) through a pipe
				return err
			},
			stall: true,
		},
		{
			name: "read-write",
			relay: func(dst, src *net.TCPConn) error {
				_, err := io.Copy(struct{ io.Writer }{dst}, struct{ io.Reader }{src})
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testutil.NewNetNS(t)
			m := newSockHash(t)
			skMsgSpec{flags: unix.BPF_F_INGRESS}.attach(t, m)

			var app, proxy, upstream, sink *net.TCPConn
			err := ns.Do(func() error {
				pl, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					return err
				}
				defer pl.Close()
				sl, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					return err
				}
				defer sl.Close()
				c, err := net.Dial("tcp4", pl.Addr().String())
				if err != nil {
					return err
				}
				app = c.(*net.TCPConn)
				if c, err = pl.Accept(); err != nil {
					return err
				}
				proxy = c.(*net.TCPConn)
				if c, err = net.Dial("tcp4", sl.Addr().String()); err != nil {
					return err
				}
				upstream = c.(*net.TCPConn)
				c, err = sl.Accept()
				sink, _ = c.(*net.TCPConn)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []*net.TCPConn{app, proxy, upstream, sink} {
				t.Cleanup(func() { c.Close() })
			}
			for _, c := range []*net.TCPConn{app, proxy} {
				putConn(t, m, c)
			}

			done := make(chan error, 1)
			go func() {
				err := tc.relay(upstream, proxy)
				upstream.CloseWrite()
				done <- err
			}()
			p := payload(splicePayload, 3)
			if _, err := app.Write(p); err != nil {
				t.Fatal(err)
			}
			if err := sink.SetReadDeadline(time.Now().Add(spliceWait)); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadFull(sink, make([]byte, len(p)))
			stuck := got == 0 && errors.Is(err, os.ErrDeadlineExceeded)
			t.Logf("%s relay: sink got %d of %d bytes (%v)", tc.name, got, len(p), err)
			if stuck != tc.stall || (!tc.stall && got != len(p)) {
				t.Errorf("sink got %d of %d bytes (%v); want the relay to stall: %v", got, len(p), err, tc.stall)
			}

			stalled, err := stalledSockets(m, os.Getpid(), stallInterval)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("sockets of this process with unread redirected bytes: %+v", stalled)
			if len(stalled) > 0 != tc.stall {
				t.Errorf("stalled sockets found: %v, want %v", len(stalled) > 0, tc.stall)
			}
			if tc.stall && (len(stalled) != 1 || stalled[0].Queued != len(p) || stalled[0].Cookie != cookieOf(t, proxy)) {
				t.Errorf("stalled sockets %+v, want the proxy's socket with %d bytes", stalled, len(p))
			}
			backlogs, err := psockBacklogs(ns, stallInterval)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("sockets in the namespace with bytes outside TCP's receive queue: %+v", backlogs)
			if tc.stall && (len(backlogs) != 1 || backlogs[0].Cookie != cookieOf(t, proxy) || backlogs[0].RmemAlloc < uint32(len(p))) {
				t.Errorf("sock_diag backlogs %+v, want the proxy's socket with at least %d bytes", backlogs, len(p))
			}
			if !tc.stall && len(backlogs) > 0 {
				t.Errorf("sock_diag backlogs %+v, want none", backlogs)
			}

			proxy.Close() // ends the relay, stalled or not
			select {
			case <-done:
			case <-time.After(spliceWait):
				t.Error("relay still running after its source was closed")
			}
		})
	}
}

// cookieOf returns c's socket cookie.
func cookieOf(t testing.TB, c *net.TCPConn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	if cerr := rc.Control(func(fd uintptr) {
		cookie, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("SO_COOKIE: %v", err)
	}
	return cookie
}

// putConn puts c in m under its local port.
func putConn(t testing.TB, m *cebpf.Map, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	port := uint32(c.LocalAddr().(*net.TCPAddr).Port)
	if cerr := rc.Control(func(fd uintptr) {
		err = m.Update(port, uint64(fd), cebpf.UpdateAny)
	}); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("socket hash update %d: %v", port, err)
	}
}

// TestSockmapReadSignal: a signal that interrupts a blocking read(2) of a socket in a socket map
// makes the read return EAGAIN, where on a plain TCP socket the read is restarted (SA_RESTART) and
// goes on waiting. tcp_bpf_recvmsg waits once (tcp_msg_wait_data → sk_wait_event, which returns
// on a signal) and answers EAGAIN when nothing came, instead of -ERESTARTSYS as tcp_recvmsg does.
// Not the splice stall, but the other way a receiver can trip on shunt's sk_msg: a program with
// blocking sockets and signal handlers that takes EAGAIN for an error.
func TestSockmapReadSignal(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	for _, tc := range []struct {
		name   string
		setup  func(tb testing.TB, m *cebpf.Map)
		eagain bool
	}{
		{name: "tcp"},
		{name: "sk_msg_ingress", setup: skMsgSpec{flags: unix.BPF_F_INGRESS}.attach, eagain: true},
		{name: "sk_msg_pass", setup: skMsgSpec{pass: true}.attach, eagain: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newConn(t, ns)
			if tc.setup != nil {
				m := newSockHash(t)
				tc.setup(t, m)
				put(t, m, a.port, a)
				put(t, m, b.port, b)
			}
			type result struct {
				n   int
				err error
			}
			tids := make(chan int, 1)
			results := make(chan result, 1)
			go func() {
				runtime.LockOSThread() // the thread is not reused: it may have handled a signal mid-syscall
				tids <- unix.Gettid()
				n, err := unix.Read(b.fd, make([]byte, 1))
				results <- result{n, err}
			}()
			tid := <-tids
			waitSleeping(t, tid)
			if err := unix.Tgkill(os.Getpid(), tid, unix.SIGURG); err != nil { // Go's handler has SA_RESTART
				t.Fatal(err)
			}
			var early *result
			select {
			case r := <-results:
				early = &r
			case <-time.After(200 * time.Millisecond): // still blocked: the read was restarted
			}
			if _, err := unix.Write(a.fd, []byte{1}); err != nil {
				t.Fatal(err)
			}
			if early == nil {
				r := <-results
				t.Logf("%s: the read went on after the signal and returned %d, %v", tc.name, r.n, r.err)
				if tc.eagain {
					t.Errorf("read was restarted, want EAGAIN")
				}
				return
			}
			t.Logf("%s: the signal ended the read: %d, %v", tc.name, early.n, early.err)
			if !tc.eagain || !errors.Is(early.err, unix.EAGAIN) {
				t.Errorf("signal ended the read with %d, %v; want it restarted: %v", early.n, early.err, !tc.eagain)
			}
		})
	}
}

// waitSleeping waits until thread tid of this process sleeps (state S), in the read it was
// started for.
func waitSleeping(t testing.TB, tid int) {
	t.Helper()
	path := fmt.Sprintf("/proc/self/task/%d/stat", tid)
	deadline := time.Now().Add(spliceWait)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ...: comm may hold spaces, the state follows its last ')'.
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "S" {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("thread %d not sleeping after %v", tid, spliceWait)
}

// BenchmarkSockmapModes measures what each way of moving a loopback connection's bytes costs,
// with read(2) receivers (a splice(2) receiver stalls in the ingress modes): bulk, 64 KiB writes
// one way, and rr, a 1-byte ping-pong (ns/op is the round trip). EAGAIN/op counts the reads of a
// blocking socket that returned EAGAIN (see benchRead).
//
//	go test ./ebpf/ -run '^$' -bench SockmapModes -count 5
func BenchmarkSockmapModes(b *testing.B) {
	testutil.RequireRoot(b)
	ns := testutil.NewNetNS(b)
	modes := []struct {
		name  string
		setup func(tb testing.TB, m *cebpf.Map)
	}{
		{name: "tcp"},
		// shunt_sk_msg today: each sendmsg to the peer's ingress list.
		{name: "sk_msg_ingress", setup: skMsgSpec{flags: unix.BPF_F_INGRESS}.attach},
		// sk_msg on every sendmsg, which passes the bytes to TCP.
		{name: "sk_msg_pass", setup: skMsgSpec{pass: true}.attach},
		// A verdict program on every receive, which passes the bytes to the psock.
		{name: "sk_skb_verdict_pass", setup: skSKBSpec{attach: cebpf.AttachSkSKBVerdict, pass: true}.attachTo},
	}
	for _, mode := range modes {
		conn := func(b *testing.B) (tcpEnd, tcpEnd) {
			a, c := newConn(b, ns)
			setRcvTimeout(b, a.fd, time.Second)
			setRcvTimeout(b, c.fd, time.Second)
			if mode.setup != nil {
				m := newSockHash(b)
				mode.setup(b, m)
				put(b, m, a.port, a)
				put(b, m, c.port, c)
			}
			return a, c
		}
		b.Run(mode.name+"/bulk", func(b *testing.B) {
			src, dst := conn(b)
			const chunk = 64 << 10
			b.SetBytes(chunk)
			errs := make(chan error, 1)
			go func() {
				p := payload(chunk, 5)
				for range b.N {
					for w := 0; w < chunk; {
						n, err := unix.Write(src.fd, p[w:])
						if err != nil {
							errs <- err
							return
						}
						w += n
					}
				}
				errs <- nil
			}()
			var eagain atomic.Int64
			buf := make([]byte, chunk)
			for total := 0; total < b.N*chunk; {
				n, err := benchRead(dst.fd, buf, &eagain)
				if err != nil || n == 0 {
					b.Fatalf("read after %d bytes: %d, %v", total, n, err)
				}
				total += n
			}
			if err := <-errs; err != nil {
				b.Fatalf("write: %v", err)
			}
			b.ReportMetric(float64(eagain.Load())/float64(b.N), "EAGAIN/op")
		})
		b.Run(mode.name+"/rr", func(b *testing.B) {
			cli, srv := conn(b)
			var eagain atomic.Int64
			errs := make(chan error, 1)
			go func() {
				one := make([]byte, 1)
				for range b.N {
					if _, err := benchRead(srv.fd, one, &eagain); err != nil {
						errs <- err
						return
					}
					if _, err := unix.Write(srv.fd, one); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			one := []byte{1}
			for range b.N {
				if _, err := unix.Write(cli.fd, one); err != nil {
					b.Fatalf("write: %v", err)
				}
				if n, err := benchRead(cli.fd, one, &eagain); err != nil || n != 1 {
					b.Fatalf("read: %d, %v", n, err)
				}
			}
			if err := <-errs; err != nil {
				b.Fatalf("echo: %v", err)
			}
			b.ReportMetric(float64(eagain.Load())/float64(b.N), "EAGAIN/op")
		})
	}
}

// benchRead is read(2) of a blocking socket with SO_RCVTIMEO that retries EAGAIN for up to
// benchStall, counting the retries, and EINTR. On a socket-map socket a signal that interrupts
// the read (Go's preemption) ends it with EAGAIN (TestSockmapReadSignal).
func benchRead(fd int, buf []byte, eagain *atomic.Int64) (int, error) {
	deadline := time.Now().Add(benchStall)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue // a signal: SO_RCVTIMEO makes reads fail with EINTR rather than restart
		}
		if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
			return n, err
		}
		eagain.Add(1)
	}
}

// benchStall is how long a benchmark's reader waits for bytes before it fails.
const benchStall = 10 * time.Second
