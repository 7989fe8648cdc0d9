//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

// The splice stall (issue 16, item 5): which socket-map redirect modes leave bytes that a receiver
// reading with splice(2) can consume, what each costs, and how to see a splice reader on a socket
// of the socket hash. The programs are built here with the asm package (redirect.c is not
// touched), so that the test needs no compiler.
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

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
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

// splicePayload is how much is sent per step, in spliceChunk writes.
const (
	splicePayload = 16 << 10
	spliceChunk   = 4 << 10
)

// SK_USER_DATA_PSOCK (include/net/sock.h): the bit of sk_user_data that marks it as a psock.
const skUserDataPsock = 4

// kernelOffsets are the context and kernel struct offsets the programs use, from the kernel's BTF.
type kernelOffsets struct {
	msgRemotePort uint32 // sk_msg_md.remote_port
	skbRemotePort uint32 // __sk_buff.remote_port
	socketSk      uint32 // socket.sk
	sockUserData  uint32 // sock.sk_user_data
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
			dst         *uint32
			typ, member string
		}{
			{&offsets.msgRemotePort, "sk_msg_md", "remote_port"},
			{&offsets.skbRemotePort, "__sk_buff", "remote_port"},
			{&offsets.socketSk, "socket", "sk"},
			{&offsets.sockUserData, "sock", "sk_user_data"},
		} {
			var s *btf.Struct
			if err := spec.TypeByName(f.typ, &s); err != nil {
				offsetsErr = fmt.Errorf("struct %s: %w", f.typ, err)
				return
			}
			off, ok := memberOffset(s.Members, f.member)
			if !ok {
				offsetsErr = fmt.Errorf("struct %s has no %s", f.typ, f.member)
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

// memberOffset finds name among ms and the members of their anonymous structs and unions.
func memberOffset(ms []btf.Member, name string) (btf.Bits, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m.Offset, true
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch c := m.Type.(type) {
		case *btf.Struct:
			inner = c.Members
		case *btf.Union:
			inner = c.Members
		}
		if off, ok := memberOffset(inner, name); ok {
			return m.Offset + off, true
		}
	}
	return 0, false
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
		t.Fatalf("program %s: %v", spec.Name, err)
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
	},
	{
		name: "sk_skb/stream_parser+verdict/pass",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBStreamVerdict, parser: true, pass: true}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			return w.b1, nil
		},
	},
	{
		name: "sk_skb/verdict/pass",
		setup: func(t testing.TB, m *cebpf.Map, w spliceWiring) (tcpEnd, []tcpEnd) {
			skSKBSpec{attach: cebpf.AttachSkSKBVerdict, pass: true}.attachTo(t, m)
			put(t, m, w.b1.port, w.b1)
			return w.b1, nil
		},
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
			pollIn := readable(t, recv.fd)
			queued := inq(t, recv.fd)
			spliced, serr := spliceN(t, recv.fd, len(p2))
			rest, rerr := readN(recv.fd, len(p2)-len(spliced))
			if !bytes.Equal(append(spliced, rest...), p2) {
				t.Fatalf("splice(2) got %d bytes (%v), then read(2) %d (%v): not the %d sent", len(spliced), serr, len(rest), rerr, len(p2))
			}
			t.Logf("%-36s splice %5d/%d (%v), then read(2) %5d; before: POLLIN %v, FIONREAD %d",
				mode.name, len(spliced), len(p2), serr, len(rest), pollIn, queued)
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
				if !errors.Is(serr, unix.EAGAIN) {
					t.Errorf("stalled splice(2): %v, want EAGAIN after SO_RCVTIMEO", serr)
				}
			}
		})
	}
}
