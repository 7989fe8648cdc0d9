//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/sockwait"
)

// The rate modes (conn, dns) make one short exchange after another with
// blocking system calls on raw sockets: what the client itself costs per
// exchange stays small next to what the path costs.

// handleConn serves a connection of a -conn listener: it reads one byte;
// "p" asks for the greeting line (the path), any other byte is written back.
// Then it closes the connection first.
func handleConn(c net.Conn, name string) error {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("conn: %w", err)
	}
	if b[0] == 'p' {
		_, err := io.WriteString(c, greeting(name, c))
		return err
	}
	_, err := c.Write(b[:])
	return err
}

// connRate makes a probe connection, which reads the path, then warmup and
// count connections to `to`, each: connect, write one byte, read the tags of
// the proxies on the way (as the probe found them) and the byte back, read
// the end of the stream, close. It reports connections per second and
// percentiles of the time each measured connection took.
func connRate(res *result, to netip.AddrPort, count, warmup int, timeout time.Duration) error {
	if count <= 0 || warmup < 0 {
		return fmt.Errorf("conn: count %d, warmup %d", count, warmup)
	}
	path, err := probePath(res, to, unix.SOCK_STREAM, "p", timeout)
	if err != nil {
		return err
	}
	want := append([]byte(proxyTags(path)), 'c')
	buf := make([]byte, len(want)+1)
	var st stalls
	for i := range warmup + count {
		t0 := time.Now()
		err := shortConn(to, want, buf, timeout)
		if err := st.record(i, warmup, t0, err); err != nil {
			return fmt.Errorf("conn %d: %w", i, err)
		}
	}
	return st.report(res)
}

// stalls times the exchanges of a rate mode and keeps apart the ones that
// stalled: a read timed out. Those are counted (with the first one's
// story) and left out of the rate and the percentiles, and the run goes on.
type stalls struct {
	start, last time.Time
	took        []time.Duration
	stalled     time.Duration // measured time spent in stalls
	n           int
	first       string
}

// record records exchange i of a run with warmup exchanges first, started
// at t0, which ended with err; it returns err unless err is a stall.
func (s *stalls) record(i, warmup int, t0 time.Time, err error) error {
	now := time.Now()
	if i == warmup {
		s.start = t0
	}
	s.last = now
	if errors.Is(err, errTimedOut) {
		s.n++
		if s.first == "" {
			s.first = fmt.Sprintf("exchange %d: %v", i, err)
		}
		if i >= warmup {
			s.stalled += now.Sub(t0)
		}
		return nil
	}
	if err == nil && i >= warmup {
		s.took = append(s.took, now.Sub(t0))
	}
	return err
}

func (s *stalls) report(res *result) error {
	res.Stalled, res.Stall = s.n, s.first
	res.EAGAINs = eagains
	if len(s.took) == 0 {
		return fmt.Errorf("every measured exchange stalled: %s", s.first)
	}
	rateOf(res, s.took, s.last.Sub(s.start)-s.stalled)
	return nil
}

// errTimedOut is a read that timed out: the exchange stalled.
var errTimedOut = errors.New("timed out")

func shortConn(to netip.AddrPort, want, buf []byte, timeout time.Duration) error {
	fd, err := dialRaw(to, unix.SOCK_STREAM, timeout)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, want[len(want)-1:]); err != nil {
		return err
	}
	n, err := readToEOF(fd, buf, timeout)
	if err != nil {
		sa, _ := unix.Getsockname(fd)
		return fmt.Errorf("local %s: after %q: %w", sockaddr(sa), buf[:n], err)
	}
	if !bytes.Equal(buf[:n], want) {
		return fmt.Errorf("read %q, want %q", buf[:n], want)
	}
	return nil
}

// dnsRate makes a probe exchange, which reads the path, then warmup and
// count DNS queries to `to`, one at a time, each from a fresh socket (as Go's
// and glibc's resolvers do): over UDP a connected datagram socket, over TCP
// a connection carrying one length-prefixed query. Every answer must be
// the proxies' tags (as the probe found them) and the server's exact answer.
// It reports queries per second and percentiles of the time each measured
// query took.
func dnsRate(res *result, to netip.AddrPort, network string, count, warmup int, timeout time.Duration) error {
	if count <= 0 || warmup < 0 {
		return fmt.Errorf("dns: count %d, warmup %d", count, warmup)
	}
	typ := unix.SOCK_DGRAM
	switch network {
	case "udp":
	case "tcp":
		typ = unix.SOCK_STREAM
	default:
		return fmt.Errorf("dns: network %q, want udp or tcp", network)
	}
	path, err := probePath(res, to, typ, "path\n", timeout)
	if err != nil {
		return err
	}
	// The server answers with the address it saw the query come from.
	var seen netip.Addr
	for f := range strings.FieldsSeq(path[strings.Index(path, "pingpong="):]) {
		if v, ok := strings.CutPrefix(f, "peer="); ok {
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return fmt.Errorf("dns: path %q: %w", path, err)
			}
			seen = ap.Addr()
		}
	}
	if !seen.IsValid() {
		return fmt.Errorf("dns: path %q has no peer", path)
	}
	tags := proxyTags(path)
	buf := make([]byte, 64<<10)
	var st stalls
	for i := range warmup + count {
		query := dnsQuery(uint16(i), to.Addr().Is6())
		answer, err := dnsAnswer(query, seen)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if typ == unix.SOCK_DGRAM {
			err = udpQuery(to, query, append([]byte(tags), answer...), buf, timeout)
		} else {
			err = tcpQuery(to, framed(query), append([]byte(tags), framed(answer)...), buf, timeout)
		}
		if err := st.record(i, warmup, t0, err); err != nil {
			return fmt.Errorf("dns query %d over %s: %w", i, network, err)
		}
	}
	return st.report(res)
}

func udpQuery(to netip.AddrPort, query, want, buf []byte, timeout time.Duration) error {
	fd, err := dialRaw(to, unix.SOCK_DGRAM, timeout)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, query); err != nil {
		return err
	}
	n, err := readRetry(fd, buf, timeout)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], want) {
		return fmt.Errorf("answer %q, want %q", buf[:n], want)
	}
	return nil
}

func tcpQuery(to netip.AddrPort, query, want, buf []byte, timeout time.Duration) error {
	fd, err := dialRaw(to, unix.SOCK_STREAM, timeout)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, query); err != nil {
		return err
	}
	for n := 0; n < len(want); {
		k, err := readRetry(fd, buf[n:len(want)], timeout)
		if err == nil && k == 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("after %q: %w", buf[:n], err)
		}
		n += k
	}
	if !bytes.Equal(buf[:len(want)], want) {
		return fmt.Errorf("answer %q, want %q", buf[:len(want)], want)
	}
	return nil
}

// probePath sends probe to `to` over a socket of type typ, reads the path
// (the proxies' tags and the server's greeting: a datagram, or the stream
// up to its end) and records it with the socket's addresses in res.
func probePath(res *result, to netip.AddrPort, typ int, probe string, timeout time.Duration) (string, error) {
	fd, err := dialRaw(to, typ, timeout)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	lsa, lerr := unix.Getsockname(fd)
	psa, perr := unix.Getpeername(fd)
	if err := errors.Join(lerr, perr); err != nil {
		return "", fmt.Errorf("socket addresses: %w", err)
	}
	res.Local, res.Peer = sockaddr(lsa), sockaddr(psa)
	if err := writeAll(fd, []byte(probe)); err != nil {
		return "", err
	}
	buf := make([]byte, 4096)
	var n int
	if typ == unix.SOCK_DGRAM {
		n, err = readRetry(fd, buf, timeout)
	} else {
		n, err = readToEOF(fd, buf, timeout)
	}
	res.Path = strings.TrimSuffix(string(buf[:n]), "\n")
	if err != nil {
		return "", fmt.Errorf("read path: %w", err)
	}
	if !strings.Contains(res.Path, "pingpong=") {
		return "", fmt.Errorf("path %q has no server greeting", res.Path)
	}
	return res.Path, nil
}

// proxyTags returns what the proxies on a path wrote before the server's
// greeting.
func proxyTags(path string) string {
	tags, _, _ := strings.Cut(path, "pingpong=")
	return tags
}

// dialRaw returns a blocking socket of type typ connected to `to`, whose reads
// time out after timeout.
func dialRaw(to netip.AddrPort, typ int, timeout time.Duration) (int, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	if to.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	err = unix.Connect(fd, sa)
	if errors.Is(err, unix.EINTR) {
		// The connection goes on: wait for its outcome.
		err = sockwait.Connected(fd, timeout)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", to, err)
	}
	return fd, nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		b = b[n:]
	}
	return nil
}

// eagains counts the reads readRetry retried after an early EAGAIN.
var eagains int

// readRetry is one read(2), retried on EINTR; a timeout is errTimedOut. A
// blocking read of a socket in a socket map can end with EAGAIN before its
// timeout: the kernel's tcp_bpf_recvmsg waits once, and a wakeup that
// brought no redirected bytes (a signal, a write-space wakeup, bytes that
// came through TCP) ends it. Programs built on poll or epoll never see this;
// readRetry does what they do: poll for the rest of the timeout, read again.
func readRetry(fd int, b []byte, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Read(fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if left := time.Until(deadline); left > 0 {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if k, perr := unix.Poll(fds, int(left.Milliseconds())+1); k > 0 || errors.Is(perr, unix.EINTR) {
					eagains++
					continue
				}
			}
			// Tell a lost wakeup (bytes or the end of the stream were
			// there) from lost bytes.
			k, _, err := unix.Recvfrom(fd, b, unix.MSG_DONTWAIT)
			switch {
			case err == nil && k > 0:
				return 0, fmt.Errorf("read: %w, yet %q was there to read (a lost wakeup)", errTimedOut, b[:k])
			case err == nil:
				return 0, fmt.Errorf("read: %w, yet the end of the stream was there (a lost wakeup)", errTimedOut)
			}
			return 0, fmt.Errorf("read: %w, nothing there to read (%v)", errTimedOut, err)
		case err != nil:
			return 0, fmt.Errorf("read: %w", err)
		}
		return n, nil
	}
}

// readToEOF reads from fd into buf until the end of the stream; more than
// len(buf) bytes is an error.
func readToEOF(fd int, buf []byte, timeout time.Duration) (int, error) {
	n := 0
	for {
		if n == len(buf) {
			return n, fmt.Errorf("more than %d bytes", len(buf))
		}
		k, err := readRetry(fd, buf[n:], timeout)
		if err != nil || k == 0 {
			return n, err
		}
		n += k
	}
}

// rateOf records exchanges per second and percentiles of took in res.
func rateOf(res *result, took []time.Duration, elapsed time.Duration) {
	res.Count = len(took)
	res.PerSec = float64(len(took)) / elapsed.Seconds()
	slices.Sort(took)
	res.P50NS = int64(percentile(took, 50))
	res.P90NS = int64(percentile(took, 90))
	res.P99NS = int64(percentile(took, 99))
	res.MinNS, res.MaxNS = int64(took[0]), int64(took[len(took)-1])
}

// DNS messages: the client asks pingpong.test A (IPv4) or AAAA (IPv6); the
// server answers with one record holding the address the query came from.

func dnsQuery(id uint16, v6 bool) []byte {
	q := []byte{byte(id >> 8), byte(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	q = append(q, "\x08pingpong\x04test\x00"...)
	qtype := byte(1)
	if v6 {
		qtype = 28
	}
	return append(q, 0, qtype, 0, 1)
}

// dnsAnswer returns the answer to query: its ID and question, and one
// record (A or AAAA by from's family, class IN, TTL 0) holding from.
func dnsAnswer(query []byte, from netip.Addr) ([]byte, error) {
	if len(query) < 12 || query[2]&0x80 != 0 || binary.BigEndian.Uint16(query[4:]) != 1 {
		return nil, fmt.Errorf("dns: %q is not a query with one question", query)
	}
	end := 12
	for end < len(query) && query[end] != 0 {
		end += 1 + int(query[end])
	}
	if end += 1 + 4; end > len(query) {
		return nil, fmt.Errorf("dns: %q: question cut short", query)
	}
	from = from.Unmap()
	rtype := byte(1)
	if from.Is6() {
		rtype = 28
	}
	rdata := from.AsSlice()
	a := make([]byte, 0, end+16+len(rdata))
	a = append(a, query[0], query[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0)
	a = append(a, query[12:end]...)
	a = append(a, 0xc0, 12, 0, rtype, 0, 1, 0, 0, 0, 0, 0, byte(len(rdata)))
	return append(a, rdata...), nil
}

// framed returns msg with the 2-byte length prefix of DNS over TCP.
func framed(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// serveDNSUDP answers each datagram on pc: "path\n" with the greeting
// "pingpong=NAME peer=IP:PORT" (no local address: the socket is bound to
// the wildcard), a DNS query with dnsAnswer.
func serveDNSUDP(pc *net.UDPConn, name string) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		var answer []byte
		if string(buf[:n]) == "path\n" {
			answer = fmt.Appendf(nil, "pingpong=%s peer=%s\n", name, from)
		} else if answer, err = dnsAnswer(buf[:n], from.Addr()); err != nil {
			continue
		}
		_, _ = pc.WriteToUDPAddrPort(answer, from)
	}
}

// handleDNSTCP serves a DNS-over-TCP connection: "path\n" asks for the
// greeting line; otherwise it answers length-prefixed queries until the
// client closes.
func handleDNSTCP(c net.Conn, name string) error {
	var head [2]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	if string(head[:]) == "pa" {
		rest := make([]byte, len("th\n"))
		if _, err := io.ReadFull(c, rest); err != nil || string(rest) != "th\n" {
			return fmt.Errorf("dns: %q after \"pa\": %v", rest, err)
		}
		_, err := io.WriteString(c, greeting(name, c))
		return err
	}
	for {
		query := make([]byte, binary.BigEndian.Uint16(head[:]))
		if _, err := io.ReadFull(c, query); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
		answer, err := dnsAnswer(query, unmap(c.RemoteAddr()).Addr())
		if err != nil {
			return err
		}
		if _, err := c.Write(framed(answer)); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, head[:]); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("dns: %w", err)
		}
	}
}

// spin keeps a CPU awake at the lowest priority: it pins its thread to
// -cpu, makes it SCHED_IDLE (it runs only when nothing else wants the CPU,
// and any waking task preempts it at once), prints "ready" and loops until
// killed.
func spin(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("spin", flag.ContinueOnError)
	cpu := fs.Int("cpu", -1, "CPU to run on (-1: any)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runtime.LockOSThread()
	if *cpu >= 0 {
		var set unix.CPUSet
		set.Set(*cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pin to CPU %d: %w", *cpu, err)
		}
	}
	if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0); err != nil {
		return fmt.Errorf("SCHED_IDLE: %w", err)
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}
	for {
		spins++
	}
}

// spins is what spin counts, so that its loop is not empty.
var spins uint64
