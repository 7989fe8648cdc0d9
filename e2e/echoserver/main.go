// Command echoserver plays the apps and the clients of the end-to-end tests.
//
//	echoserver serve -name NAME -tcp 8080,9090 -dns 53
//
// answers every TCP connection on the -tcp ports with one line
// "app=NAME peer=IP:PORT local=IP:PORT" after reading one line, and every
// DNS query (a UDP datagram, or a line over TCP) on the -dns ports with
// "dns=NAME peer=IP:PORT". A port listens on all addresses, IPv4 and IPv6;
// an entry HOST:PORT on that address only. It prints "ready" once every
// port is bound.
//
//	echoserver client -tcp ADDR | -udp ADDR [-sendto]
//
// sends one line (or datagram) to ADDR and prints what comes back: over TCP
// everything up to the server's close, over UDP one datagram. The UDP socket
// is connected unless -sendto: then it sends with sendto(2), reads with
// recvfrom(2) and fails when the answer's source is not ADDR. With -count N
// it sends N UDP queries one after the other on the same socket, each once
// the previous one is answered, and prints "queries=N per_second=RATE".
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "echoserver:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: echoserver serve|client [flags]")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout)
	case "client":
		return client(args[1:], stdout)
	}
	return fmt.Errorf("unknown command %q", args[0])
}

const timeout = 5 * time.Second

func serve(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "app", "name in every answer")
	tcpPorts := fs.String("tcp", "", "comma-separated TCP app ports or HOST:PORTs")
	dnsPorts := fs.String("dns", "", "comma-separated DNS ports or HOST:PORTs (UDP and TCP)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error)
	var start []func()
	for port := range ports(*tcpPorts) {
		l, err := net.Listen("tcp", listenAddr(port))
		if err != nil {
			return err
		}
		start = append(start, func() {
			errc <- serveTCP(l, func(peer, local netip.AddrPort) string {
				return fmt.Sprintf("app=%s peer=%s local=%s\n", *name, peer, local)
			})
		})
	}
	for port := range ports(*dnsPorts) {
		l, err := net.Listen("tcp", listenAddr(port))
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", listenAddr(port))
		if err != nil {
			return err
		}
		answer := func(peer, _ netip.AddrPort) string {
			return fmt.Sprintf("dns=%s peer=%s\n", *name, peer)
		}
		start = append(start,
			func() { errc <- serveTCP(l, answer) },
			func() { errc <- serveUDP(pc, answer) })
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}
	for _, f := range start {
		go f()
	}
	return <-errc
}

// listenAddr returns the address to listen on for a -tcp or -dns entry: a
// bare port means every address, IPv4 and IPv6.
func listenAddr(entry string) string {
	if strings.Contains(entry, ":") {
		return entry
	}
	return "[::]:" + entry
}

func ports(list string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for p := range strings.SplitSeq(list, ",") {
			if p != "" && !yield(p) {
				return
			}
		}
	}
}

func serveTCP(l net.Listener, answer func(peer, local netip.AddrPort) string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(timeout))
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				return
			}
			_, _ = io.WriteString(c, answer(addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())))
		}()
	}
}

func serveUDP(pc net.PacketConn, answer func(peer, local netip.AddrPort) string) error {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		_, _ = pc.WriteTo([]byte(answer(addrPort(from), netip.AddrPort{})), from)
	}
}

func client(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	tcp := fs.String("tcp", "", "TCP address to query")
	udp := fs.String("udp", "", "UDP address to query")
	sendto := fs.Bool("sendto", false, "with -udp: query from an unconnected socket, and want the answer from the address asked")
	count := fs.Int("count", 0, "with -udp: send this many queries, one at a time, and print the rate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*sendto || *count > 0) && (*udp == "" || *tcp != "") {
		return errors.New("client: -sendto and -count only with -udp")
	}
	if *count > 0 {
		return clientRate(*udp, *sendto, *count, stdout)
	}
	if *sendto {
		return clientSendto(*udp, stdout)
	}
	network, addr := "tcp", *tcp
	if *udp != "" {
		network, addr = "udp", *udp
	}
	if (*tcp == "") == (*udp == "") {
		return errors.New("client: want exactly one of -tcp and -udp")
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return err
	}
	var reply []byte
	if network == "udp" {
		buf := make([]byte, 64<<10)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		reply = buf[:n]
	} else if reply, err = io.ReadAll(c); err != nil {
		return fmt.Errorf("after %q: %w", reply, err)
	}
	_, err = stdout.Write(reply)
	return err
}

// clientSendto queries addr over UDP from an unconnected socket and prints
// the answer, which must come from addr.
func clientSendto(addr string, stdout io.Writer) error {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	network := "udp4"
	if to.Addr().Is6() {
		network = "udp6"
	}
	pc, err := net.ListenUDP(network, nil)
	if err != nil {
		return err
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(timeout))
	if _, err := pc.WriteToUDPAddrPort([]byte("hello\n"), to); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return err
	}
	if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != to {
		return fmt.Errorf("answer %q from %s, asked %s", buf[:n], from, to)
	}
	_, err = stdout.Write(buf[:n])
	return err
}

// clientRate sends count queries to addr over UDP, each after the answer to
// the previous one, and prints the rate.
func clientRate(addr string, sendto bool, count int, stdout io.Writer) error {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	var pc *net.UDPConn
	if sendto {
		pc, err = net.ListenUDP("udp", nil)
	} else {
		pc, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	}
	if err != nil {
		return err
	}
	defer pc.Close()
	query := []byte("hello\n")
	buf := make([]byte, 64<<10)
	start := time.Now()
	for i := range count {
		_ = pc.SetDeadline(time.Now().Add(timeout))
		if sendto {
			_, err = pc.WriteToUDPAddrPort(query, to)
		} else {
			_, err = pc.Write(query)
		}
		if err != nil {
			return fmt.Errorf("query %d: %w", i, err)
		}
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return fmt.Errorf("answer %d: %w", i, err)
		}
		if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != to || n == 0 {
			return fmt.Errorf("answer %d %q from %s, asked %s", i, buf[:n], from, to)
		}
	}
	_, err = fmt.Fprintf(stdout, "queries=%d per_second=%.0f\n", count, float64(count)/time.Since(start).Seconds())
	return err
}

// addrPort returns a's address and port with IPv4-mapped IPv6 unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPortFrom(netip.Addr{}, 0)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
