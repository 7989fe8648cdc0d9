//go:build linux

// Command pingpong is the data-path client and server of the end-to-end
// tests and the data-path benchmark: it moves payloads through the pod's
// interception and tells what arrived, how fast, and along which path.
//
//	pingpong serve -name NAME -tcp 7070,7071 [-conn 7072] [-dns 53]
//
// listens on every address, IPv4 and IPv6, of each port (or on HOST:PORT
// only) and prints "ready" once all are bound. On each -tcp connection it
// first writes the line "pingpong=NAME peer=IP:PORT local=IP:PORT", then
// reads one command line and carries it out with plain read/write loops (no
// splice):
//
//	echo N           read N bytes and write each chunk back as it comes
//	rr SIZE COUNT    COUNT times: read SIZE bytes, write them back
//	sink N           read N bytes, then write "done N"
//	source N         write N bytes
//
// A -conn connection costs as little as a connection can: the server reads
// one byte, writes it back and closes; only the byte "p" is answered with
// the greeting line instead (the path). A -dns port serves UDP and TCP: a
// DNS query (over TCP length-prefixed, any number per connection) for any
// name is answered with one A or AAAA record holding the address the query
// came from; the datagram or TCP line "path\n" is answered with the
// greeting ("pingpong=NAME peer=IP:PORT" over UDP).
//
//	pingpong client -addr IP:PORT -mode echo|rr|up|down|conn|dns [flags]
//
// connects to IP:PORT, reads the first line (the tags of the proxies on the
// way, then the server's greeting: the path), runs one command and prints one
// JSON object: the path, its socket's local and peer addresses (from
// getsockname and getpeername after connect), and what the mode measured:
// echo sends -bytes of pseudo-random data and checks that exactly they came
// back (sha256); rr makes -warmup then -count round trips of -size bytes
// and reports percentiles of the measured ones; up sends -bytes to a sink and
// reports the rate until the server confirmed them all; down reads -bytes
// from a source. The rate modes talk to a -conn or -dns port: a first
// exchange reads the path, then -warmup and -count short exchanges follow,
// and the client reports how many per second and percentiles of their
// times: conn makes connections (connect, write a byte, read the proxies'
// tags and the byte back up to the server's close, close); dns makes queries
// over -network udp or tcp, one at a time, each from a new socket, and
// checks every answer. An exchange that stalls (a read times out after
// -timeout) is counted as stalled, left out of the figures, and the run goes
// on. On failure it prints the object with "error" set and
// exits 1.
//
//	pingpong spin -cpu N
//
// keeps CPU N awake at the lowest priority (SCHED_IDLE) until killed: the
// benchmark runs one per CPU during latency runs.
//
//	pingpong netns-cookie
//
// prints the cookie of the network namespace it runs in (SO_NETNS_COOKIE),
// the key eBPF programs know a namespace by.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pingpong serve|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:], os.Stdout)
	case "client":
		err = client(os.Args[2:], os.Stdout)
	case "spin":
		err = spin(os.Args[2:], os.Stdout)
	case "netns-cookie":
		err = netnsCookie(os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pingpong:", err)
		os.Exit(1)
	}
}

// bufSize is the size of every read and write buffer.
const bufSize = 64 << 10

func serve(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "pingpong", "name in the greeting")
	tcp := fs.String("tcp", "", "comma-separated ports or HOST:PORTs")
	conn := fs.String("conn", "", "comma-separated ports or HOST:PORTs of the connection-rate listener")
	dns := fs.String("dns", "", "comma-separated ports or HOST:PORTs of the DNS server (UDP and TCP)")
	timeout := fs.Duration("timeout", 2*time.Minute, "bound of each connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Every socket is bound before "ready"; the loops start after.
	var loops []func() error
	listen := func(list string, handler func(net.Conn, string) error) error {
		for entry := range entries(list) {
			l, err := net.Listen("tcp", entry)
			if err != nil {
				return err
			}
			loops = append(loops, func() error { return acceptLoop(l, *timeout, func(c net.Conn) error { return handler(c, *name) }) })
		}
		return nil
	}
	if err := errors.Join(listen(*tcp, handle), listen(*conn, handleConn), listen(*dns, handleDNSTCP)); err != nil {
		return err
	}
	for entry := range entries(*dns) {
		a, err := net.ResolveUDPAddr("udp", entry)
		if err != nil {
			return err
		}
		pc, err := net.ListenUDP("udp", a)
		if err != nil {
			return err
		}
		loops = append(loops, func() error { return serveDNSUDP(pc, *name) })
	}
	if len(loops) == 0 {
		return errors.New("serve: no -tcp, -conn or -dns ports")
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}
	errc := make(chan error, len(loops))
	for _, loop := range loops {
		go func() { errc <- loop() }()
	}
	return <-errc
}

// entries yields the entries of a comma-separated list of ports (every
// address, IPv4 and IPv6) and HOST:PORTs as listen addresses.
func entries(list string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for entry := range strings.SplitSeq(list, ",") {
			if entry == "" {
				continue
			}
			if !strings.Contains(entry, ":") {
				entry = "[::]:" + entry
			}
			if !yield(entry) {
				return
			}
		}
	}
}

func acceptLoop(l net.Listener, timeout time.Duration, handler func(net.Conn) error) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(timeout))
			if err := handler(c); err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", c.RemoteAddr(), err)
			}
		}()
	}
}

// greeting is the line the server writes first on a connection.
func greeting(name string, c net.Conn) string {
	return fmt.Sprintf("pingpong=%s peer=%s local=%s\n", name, unmap(c.RemoteAddr()), unmap(c.LocalAddr()))
}

func handle(c net.Conn, name string) error {
	if _, err := io.WriteString(c, greeting(name, c)); err != nil {
		return err
	}
	r := bufio.NewReaderSize(c, bufSize)
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read command: %w", err)
	}
	fields := strings.Fields(line)
	nums := make([]int64, len(fields))
	for i := 1; i < len(fields); i++ {
		if nums[i], err = strconv.ParseInt(fields[i], 10, 64); err != nil || nums[i] < 0 {
			return fmt.Errorf("command %q: bad number %q", line, fields[i])
		}
	}
	want := map[string]int{"echo": 2, "rr": 3, "sink": 2, "source": 2}
	if len(fields) == 0 || want[fields[0]] != len(fields) {
		return fmt.Errorf("unknown command %q", line)
	}
	buf := make([]byte, bufSize)
	switch fields[0] {
	case "echo":
		for left := nums[1]; left > 0; {
			n, err := r.Read(buf[:min(int64(len(buf)), left)])
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return werr
				}
				left -= int64(n)
			}
			if err != nil {
				return fmt.Errorf("echo: %d bytes short: %w", left, err)
			}
		}
	case "rr":
		size := nums[1]
		if size > bufSize {
			return fmt.Errorf("rr: size %d over %d", size, bufSize)
		}
		for range nums[2] {
			if _, err := io.ReadFull(r, buf[:size]); err != nil {
				return fmt.Errorf("rr: %w", err)
			}
			if _, err := c.Write(buf[:size]); err != nil {
				return err
			}
		}
	case "sink":
		if err := discard(r, buf, nums[1]); err != nil {
			return fmt.Errorf("sink: %w", err)
		}
		if _, err := fmt.Fprintf(c, "done %d\n", nums[1]); err != nil {
			return err
		}
	case "source":
		if err := fill(c, buf, nums[1]); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	}
	return nil
}

// discard reads n bytes from r into buf, chunk by chunk.
func discard(r io.Reader, buf []byte, n int64) error {
	for n > 0 {
		k, err := r.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		if err != nil && n > 0 {
			return fmt.Errorf("%d bytes short: %w", n, err)
		}
	}
	return nil
}

// fill writes n bytes of buf, over and over, to w.
func fill(w io.Writer, buf []byte, n int64) error {
	for n > 0 {
		k, err := w.Write(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		if err != nil {
			return err
		}
	}
	return nil
}

// result is what the client prints.
type result struct {
	Mode  string `json:"mode"`
	Path  string `json:"path"`
	Local string `json:"local"`
	Peer  string `json:"peer"`
	Error string `json:"error,omitempty"`

	// echo, up, down
	Bytes     int64   `json:"bytes,omitempty"`
	Intact    bool    `json:"intact,omitempty"`
	SHA256    string  `json:"sha256,omitempty"`
	Seconds   float64 `json:"seconds,omitempty"`
	MiBPerSec float64 `json:"mib_per_s,omitempty"`

	// rr
	Size   int   `json:"size,omitempty"`
	Count  int   `json:"count,omitempty"`
	P50NS  int64 `json:"p50_ns,omitempty"`
	P90NS  int64 `json:"p90_ns,omitempty"`
	P99NS  int64 `json:"p99_ns,omitempty"`
	MinNS  int64 `json:"min_ns,omitempty"`
	MaxNS  int64 `json:"max_ns,omitempty"`
	MeanNS int64 `json:"mean_ns,omitempty"`

	// conn, dns: exchanges per second (and the percentiles above of the
	// time each took)
	PerSec float64 `json:"per_s,omitempty"`
	// Stalled exchanges (a read timed out after -timeout) are left out of
	// the figures; Stall tells the first one.
	Stalled int    `json:"stalled,omitempty"`
	Stall   string `json:"stall,omitempty"`
	// EAGAINs counts blocking reads that ended with EAGAIN before their
	// timeout, and were waited for with poll(2) and retried as an event
	// loop would (see readRetry).
	EAGAINs int `json:"eagains,omitempty"`
}

func client(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	addr := fs.String("addr", "", "IP:PORT to connect to")
	mode := fs.String("mode", "echo", "echo, rr, up, down, conn or dns")
	size := fs.Int("size", 64, "rr: bytes each way per round trip")
	count := fs.Int("count", 20000, "rr, conn, dns: measured round trips, connections or queries")
	warmup := fs.Int("warmup", 2000, "rr, conn, dns: round trips, connections or queries before measuring")
	network := fs.String("network", "udp", "dns: udp or tcp")
	nbytes := fs.Int64("bytes", 1<<20, "echo, up, down: payload size")
	timeout := fs.Duration("timeout", time.Minute, "bound of the whole exchange (conn, dns: of each connection or query)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	to, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	res := result{Mode: *mode}
	switch *mode {
	case "conn":
		err = connRate(&res, to, *count, *warmup, *timeout)
	case "dns":
		err = dnsRate(&res, to, *network, *count, *warmup, *timeout)
	default:
		err = exchange(&res, to, *mode, *size, *count, *warmup, *nbytes, *timeout)
	}
	if err != nil {
		res.Error = err.Error()
	}
	out, jerr := json.Marshal(res)
	if jerr != nil {
		return jerr
	}
	if _, werr := fmt.Fprintf(stdout, "%s\n", out); werr != nil {
		return werr
	}
	return err
}

func exchange(res *result, to netip.AddrPort, mode string, size, count, warmup int, nbytes int64, timeout time.Duration) error {
	network := "tcp4"
	if to.Addr().Is6() {
		network = "tcp6"
	}
	c, err := net.DialTimeout(network, to.String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if res.Local, res.Peer, err = sockAddrs(tc); err != nil {
		return err
	}
	r := bufio.NewReaderSize(tc, bufSize)
	path, err := r.ReadString('\n')
	res.Path = strings.TrimSuffix(path, "\n")
	if err != nil {
		return fmt.Errorf("read path: %w", err)
	}
	switch mode {
	case "echo":
		return echo(res, tc, r, nbytes)
	case "rr":
		return roundTrips(res, tc, r, size, count, warmup)
	case "up":
		return up(res, tc, r, nbytes)
	case "down":
		return down(res, tc, r, nbytes)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// sockAddrs returns the addresses getsockname and getpeername report for c.
func sockAddrs(c *net.TCPConn) (local, peer string, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", "", err
	}
	var lsa, psa unix.Sockaddr
	var lerr, perr error
	if err := rc.Control(func(fd uintptr) {
		lsa, lerr = unix.Getsockname(int(fd))
		psa, perr = unix.Getpeername(int(fd))
	}); err != nil {
		return "", "", err
	}
	if err := errors.Join(lerr, perr); err != nil {
		return "", "", fmt.Errorf("socket addresses: %w", err)
	}
	return sockaddr(lsa), sockaddr(psa), nil
}

func sockaddr(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}

func echo(res *result, c *net.TCPConn, r *bufio.Reader, n int64) error {
	payload := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{'p', 'i', 'n', 'g'})
	_, _ = rng.Read(payload)
	sum := sha256.Sum256(payload)
	res.SHA256 = hex.EncodeToString(sum[:])
	start := time.Now()
	if _, err := fmt.Fprintf(c, "echo %d\n", n); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, 0, n)
	buf := make([]byte, bufSize)
	for int64(len(got)) < n {
		k, err := r.Read(buf[:min(int64(len(buf)), n-int64(len(got)))])
		got = append(got, buf[:k]...)
		if err != nil {
			res.Bytes = int64(len(got))
			return fmt.Errorf("echo: got %d of %d bytes back: %w", len(got), n, err)
		}
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("echo: write: %w", err)
	}
	res.Seconds = time.Since(start).Seconds()
	res.Bytes = int64(len(got))
	res.Intact = bytes.Equal(got, payload)
	if !res.Intact {
		gsum := sha256.Sum256(got)
		i := 0
		for i < len(got) && got[i] == payload[i] {
			i++
		}
		return fmt.Errorf("echo: payload changed on the way (sha256 %x, first difference at byte %d)", gsum, i)
	}
	// The server closes after the payload: nothing more may come.
	if k, err := r.Read(buf[:1]); k != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("echo: after the payload: %d more bytes, %v", k, err)
	}
	return nil
}

func roundTrips(res *result, c *net.TCPConn, r *bufio.Reader, size, count, warmup int) error {
	if size <= 0 || size > bufSize || count <= 0 || warmup < 0 {
		return fmt.Errorf("rr: size %d (1..%d), count %d, warmup %d", size, bufSize, count, warmup)
	}
	if _, err := fmt.Fprintf(c, "rr %d %d\n", size, warmup+count); err != nil {
		return err
	}
	out := bytes.Repeat([]byte{'x'}, size)
	in := make([]byte, size)
	took := make([]time.Duration, 0, count)
	for i := range warmup + count {
		start := time.Now()
		if _, err := c.Write(out); err != nil {
			return fmt.Errorf("rr %d: %w", i, err)
		}
		if _, err := io.ReadFull(r, in); err != nil {
			return fmt.Errorf("rr %d: %w", i, err)
		}
		if i >= warmup {
			took = append(took, time.Since(start))
		}
		if !bytes.Equal(in, out) {
			return fmt.Errorf("rr %d: payload changed on the way", i)
		}
	}
	slices.Sort(took)
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	res.Size, res.Count = size, count
	res.P50NS = int64(percentile(took, 50))
	res.P90NS = int64(percentile(took, 90))
	res.P99NS = int64(percentile(took, 99))
	res.MinNS, res.MaxNS = int64(took[0]), int64(took[len(took)-1])
	res.MeanNS = int64(sum) / int64(len(took))
	return nil
}

// percentile returns the p-th percentile of sorted ds (nearest rank).
func percentile(ds []time.Duration, p float64) time.Duration {
	i := int(float64(len(ds))*p/100+0.5) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func up(res *result, c *net.TCPConn, r *bufio.Reader, n int64) error {
	buf := bytes.Repeat([]byte{'u'}, bufSize)
	start := time.Now()
	if _, err := fmt.Fprintf(c, "sink %d\n", n); err != nil {
		return err
	}
	if err := fill(c, buf, n); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("up: confirmation: %w", err)
	}
	if want := fmt.Sprintf("done %d\n", n); line != want {
		return fmt.Errorf("up: server answered %q, want %q", line, want)
	}
	rate(res, n, time.Since(start))
	return nil
}

func down(res *result, c *net.TCPConn, r *bufio.Reader, n int64) error {
	buf := make([]byte, bufSize)
	start := time.Now()
	if _, err := fmt.Fprintf(c, "source %d\n", n); err != nil {
		return err
	}
	if err := discard(r, buf, n); err != nil {
		return fmt.Errorf("down: %w", err)
	}
	rate(res, n, time.Since(start))
	return nil
}

func rate(res *result, n int64, d time.Duration) {
	res.Bytes, res.Seconds = n, d.Seconds()
	res.MiBPerSec = float64(n) / (1 << 20) / d.Seconds()
}

func netnsCookie(stdout io.Writer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	_, err = fmt.Fprintln(stdout, cookie)
	return err
}

// unmap returns a TCP address with an IPv4-mapped IPv6 address unmapped.
func unmap(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
