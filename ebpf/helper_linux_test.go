//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the processes that run inside the test cgroup: TestMain runs
// runHelper instead of the tests when helperEnv names a role.
const helperEnv = "SHUNT_EBPF_TEST_HELPER"

// payloadSizes are the sizes of the payloads the app sends on every connection and expects back.
var payloadSizes = []int{1, 1000, 64 << 10, 1 << 20}

const helperTimeout = 20 * time.Second

func runHelper(role string, args []string) int {
	var err error
	switch role {
	case "proxy":
		err = runProxy(args)
	case "server":
		err = runServer(args)
	case "app":
		err = runApp(args)
	case "dnsproxy":
		err = runDNSProxy(args)
	case "dnsapp":
		err = runDNSApp(args)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		return 1
	}
	return 0
}

// runProxy is the sidecar: it accepts on -listen, reads the original destination, writes
// "proxy orig=ADDR\n" to the app and relays to that destination with read/write loops.
func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "[::]:15001", "address")
	name := fs.String("name", "proxy", "first word of the greeting")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go proxyConn(c.(*net.TCPConn), *name)
	}
}

func proxyConn(c *net.TCPConn, name string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(helperTimeout))
	if err := checkOtherSockopts(c); err != nil {
		fmt.Fprintf(c, "%s error=%q\n", name, err)
		return
	}
	orig, err := originalDst(c)
	if err != nil {
		fmt.Fprintf(c, "%s error=%q\n", name, err)
		return
	}
	fmt.Fprintf(c, "%s orig=%s\n", name, orig)
	up, err := net.DialTimeout("tcp", orig.String(), 5*time.Second)
	if err != nil {
		fmt.Fprintf(c, "%s error=%q\n", name, err)
		return
	}
	defer up.Close()
	_ = up.SetDeadline(time.Now().Add(helperTimeout))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = pipe(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_ = pipe(c, up)
	_ = c.CloseWrite()
	<-done
}

// checkOtherSockopts checks that the getsockopt program leaves other options alone: TCP_INFO
// with a buffer larger than a page (the kernel's own length comes back), and SO_ORIGINAL_DST
// with a buffer too small for the answer (an error, the length untouched).
func checkOtherSockopts(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		buf := make([]byte, 8192)
		n, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, buf)
		if err != nil || n < 100 || n >= len(buf) {
			serr = fmt.Errorf("TCP_INFO with an 8 KiB buffer: length %d, %v", n, err)
			return
		}
		small := make([]byte, 8)
		n, err = getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, small)
		if err == nil || n != len(small) {
			serr = fmt.Errorf("SO_ORIGINAL_DST with an 8-byte buffer: length %d, error %v; want the buffer untouched and an error", n, err)
		}
	})
	return errors.Join(err, serr)
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST, which x/sys/unix does not define.
const ip6tSOOriginalDst = 80

func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	var orig netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		if peer.Addr().Unmap().Is4() {
			buf := make([]byte, unix.SizeofSockaddrInet4)
			var n int
			n, serr = getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, buf)
			if serr == nil && n != len(buf) {
				serr = fmt.Errorf("SO_ORIGINAL_DST length %d", n)
			}
			sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&buf[0]))
			orig = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), binary.BigEndian.Uint16(buf[2:4]))
			return
		}
		buf := make([]byte, unix.SizeofSockaddrInet6)
		var n int
		n, serr = getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, buf)
		if serr == nil && n != len(buf) {
			serr = fmt.Errorf("IP6T_SO_ORIGINAL_DST length %d", n)
		}
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&buf[0]))
		orig = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), binary.BigEndian.Uint16(buf[2:4]))
	})
	if err = errors.Join(err, serr); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return orig, nil
}

func getsockopt(fd uintptr, level, name int, buf []byte) (int, error) {
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return int(l), errno
	}
	return int(l), nil
}

// pipe copies with a plain read/write loop: bytes that arrived through sk_msg stall splice(2),
// which io.Copy between two TCP connections uses.
func pipe(dst, src net.Conn) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// runServer greets each connection with "server NAME peer=ADDR\n" and echoes what it reads.
func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "", "address")
	name := fs.String("name", "app", "name in the greeting")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	return serveEcho(l, *name)
}

func serveEcho(l net.Listener, name string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(helperTimeout))
			fmt.Fprintf(c, "server %s peer=%s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort())
			_ = pipe(c, c)
		}()
	}
}

// appResult is what the app reports for one target, as a JSON line.
type appResult struct {
	Target string   `json:"target"`
	Lines  []string `json:"lines"` // greetings up to and including the server's
	Peer   string   `json:"peer"`  // getpeername(2)
	Local  string   `json:"local"` // getsockname(2)
	Err    string   `json:"err,omitempty"`
}

// runApp dials each target ("ADDR:PORT", "mapped:IP:PORT" for an IPv4 address dialed on an
// IPv6 socket), reads the greetings up to the server's, sends every payload and checks its echo,
// and prints one appResult per target.
func runApp(args []string) error {
	fs := flag.NewFlagSet("app", flag.ContinueOnError)
	bind := fs.String("bind", "", "local address to bind")
	hold := fs.Bool("hold", false, `after the payloads, print "ready" and keep each connection open until standard input ends`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, target := range fs.Args() {
		r := appResult{Target: target}
		if err := appConn(target, *bind, *hold, &r); err != nil {
			r.Err = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func appConn(target, bind string, hold bool, r *appResult) error {
	c, err := dialTarget(target, bind)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(helperTimeout))
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	_ = rc.Control(func(fd uintptr) {
		if sa, err := unix.Getpeername(int(fd)); err == nil {
			r.Peer = sockaddrString(sa)
		}
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			r.Local = sockaddrString(sa)
		}
	})
	br := bufio.NewReader(c)
	for len(r.Lines) < 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read greeting: %w", err)
		}
		r.Lines = append(r.Lines, strings.TrimSuffix(line, "\n"))
		if strings.HasPrefix(line, "server ") {
			break
		}
		if !strings.Contains(line, " orig=") {
			return fmt.Errorf("greeting %q", line)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, size := range payloadSizes {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(rnd.Uint32())
		}
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			werr <- err
		}()
		got := make([]byte, size)
		_, rerr := io.ReadFull(br, got)
		if err := errors.Join(<-werr, rerr); err != nil {
			return fmt.Errorf("payload of %d bytes: %w", size, err)
		}
		if !bytes.Equal(got, payload) {
			return fmt.Errorf("payload of %d bytes came back altered", size)
		}
	}
	if hold {
		fmt.Println("ready")
		if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
			return err
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		return fmt.Errorf("read to EOF: %w", err)
	}
	if len(rest) > 0 {
		return fmt.Errorf("%d bytes more than sent came back", len(rest))
	}
	return nil
}

func dialTarget(target, bind string) (*net.TCPConn, error) {
	if rest, ok := strings.CutPrefix(target, "mapped:"); ok {
		ap, err := netip.ParseAddrPort(rest)
		if err != nil {
			return nil, err
		}
		return dialMapped(ap)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if bind != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(bind)}
	}
	c, err := d.Dial("tcp", target)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialMapped connects an AF_INET6 socket to the IPv4-mapped form of ap.
func dialMapped(ap netip.AddrPort) (*net.TCPConn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, syscall.EINTR) {
		return nil, fmt.Errorf("connect %s: %w", ap, err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}
