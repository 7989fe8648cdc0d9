package doctor

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"unsafe"

	"github.com/mdlayher/netlink"
	vnetlink "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/backend"
	shuntebpf "github.com/shuntmesh/shunt/ebpf"
	"github.com/shuntmesh/shunt/internal/netns"
	"github.com/shuntmesh/shunt/internal/nfnl"
	"github.com/shuntmesh/shunt/internal/podroute"
)

// Collect reads the namespace at opts.NetNS and the kernel and returns the report. What it cannot read
// becomes a warning; it fails only when it cannot enter the namespace.
func Collect(ctx context.Context, opts Options) (*Report, error) {
	f := &facts{netns: opts.NetNS, mode: opts.Mode}
	if err := netns.Do(opts.NetNS, func() error { return readNamespace(f) }); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", opts.NetNS, err)
	}
	_, f.choice, f.choiceErr = backend.Select(backend.Settings{NetNS: opts.NetNS})
	f.found, f.foundErr = backend.Installed(ctx, opts.NetNS)
	readKernel(f)
	return build(f), nil
}

// readNamespace reads, in the namespace, the legacy tables /proc lists, the nft tables and shunt's
// TPROXY routing.
func readNamespace(f *facts) error {
	if _, err := os.Stat("/proc/thread-self/net"); err == nil {
		f.procNet = true
		var errs []error
		for i, name := range []string{"ip_tables_names", "ip6_tables_names"} {
			data, err := os.ReadFile("/proc/thread-self/net/" + name)
			switch {
			case err == nil:
				f.legacy[i] = parseList(data)
			case !errors.Is(err, os.ErrNotExist):
				errs = append(errs, err)
			}
		}
		f.legacyErr = errors.Join(errs...)
		for i, name := range []string{"ip_tables_targets", "ip6_tables_targets"} {
			if data, err := os.ReadFile("/proc/thread-self/net/" + name); err == nil {
				f.targets[i] = parseList(data)
			}
		}
	}
	var errs []error
	for i, lay := range []struct {
		legacyLayout
		domain, level int
	}{{legacyV4, unix.AF_INET, unix.SOL_IP}, {legacyV6, unix.AF_INET6, unix.SOL_IPV6}} {
		if len(f.legacy[i]) == 0 {
			continue
		}
		var err error
		f.legacyRead[i], err = readLegacy(lay.legacyLayout, lay.domain, lay.level, f.legacy[i])
		errs = append(errs, err)
	}
	f.legacyErr = errors.Join(append(errs, f.legacyErr)...)
	f.nft, f.nftErr = dumpNFT()
	f.routing, f.routingErr = tproxyRouting()
	return nil
}

// IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES, and their IPv6 twins.
const (
	soGetInfo    = 64
	soGetEntries = 65
)

// readLegacy reads the legacy tables names, which /proc listed: opening a table it does not list
// would create it.
func readLegacy(lay legacyLayout, domain, level int, names []string) (map[string]legacyTable, error) {
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	out := map[string]legacyTable{}
	var errs []error
	for _, name := range names {
		t, err := readLegacyTable(fd, lay, level, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("table %s: %w", name, err))
			continue
		}
		out[name] = t
	}
	return out, errors.Join(errs...)
}

func readLegacyTable(fd int, lay legacyLayout, level int, name string) (legacyTable, error) {
	if len(name) >= 32 {
		return legacyTable{}, errors.New("name too long")
	}
	ne := binary.NativeEndian
	for range 5 { // the table may change between the two calls
		// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
		info := make([]byte, 84)
		copy(info, name)
		if err := getsockopt(fd, level, soGetInfo, info); err != nil {
			return legacyTable{}, fmt.Errorf("get info: %w", err)
		}
		size := ne.Uint32(info[80:])
		// struct ipt_get_entries: name[32], size, then the entries, aligned to 8.
		buf := make([]byte, 40+size)
		copy(buf, name)
		ne.PutUint32(buf[32:], size)
		err := getsockopt(fd, level, soGetEntries, buf)
		if errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return legacyTable{}, fmt.Errorf("get entries: %w", err)
		}
		chains, rules, err := countLegacy(lay, buf[40:], ne.Uint32(info[32:]))
		return legacyTable{chains: chains, rules: rules}, err
	}
	return legacyTable{}, errors.New("the table keeps changing")
}

// getsockopt is getsockopt(2) with buf as both the request and the answer.
func getsockopt(fd, level, name int, buf []byte) error {
	size := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// dumpNFT returns every nft table of the namespace with its chains and rule count: three dumps.
func dumpNFT() ([]nftTable, error) {
	sock, err := nfnl.Open()
	if err != nil {
		return nil, err
	}
	defer sock.Close()
	tables, err := sock.DumpTables(unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("dump tables: %w", err)
	}
	var out []nftTable
	index := map[[2]string]int{}
	for _, m := range tables {
		fam, attrs := nftMessage(m, unix.NFTA_TABLE_NAME)
		if attrs[0] == "" {
			continue
		}
		index[[2]string{fam, attrs[0]}] = len(out)
		out = append(out, nftTable{family: fam, name: attrs[0]})
	}
	chains, err := dump(sock, unix.NFT_MSG_GETCHAIN)
	if err != nil {
		return nil, fmt.Errorf("dump chains: %w", err)
	}
	for _, m := range chains {
		fam, attrs := nftMessage(m, unix.NFTA_CHAIN_TABLE, unix.NFTA_CHAIN_NAME)
		if i, ok := index[[2]string{fam, attrs[0]}]; ok {
			out[i].chains = append(out[i].chains, attrs[1])
		}
	}
	rules, err := dump(sock, unix.NFT_MSG_GETRULE)
	if err != nil {
		return nil, fmt.Errorf("dump rules: %w", err)
	}
	for _, m := range rules {
		fam, attrs := nftMessage(m, unix.NFTA_RULE_TABLE)
		if i, ok := index[[2]string{fam, attrs[0]}]; ok {
			out[i].rules++
		}
	}
	for i := range out {
		slices.Sort(out[i].chains)
	}
	slices.SortFunc(out, func(a, b nftTable) int {
		return cmp.Or(cmp.Compare(a.family, b.family), cmp.Compare(a.name, b.name))
	})
	return out, nil
}

// dump dumps the nft objects of type msg (NFT_MSG_GETCHAIN, ...) of every family.
func dump(sock *nfnl.Sock, msg int) ([]syscall.NetlinkMessage, error) {
	return sock.Dump(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg)},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
}

// nftMessage returns the nft family of m and the string attributes of the given types, in order.
func nftMessage(m syscall.NetlinkMessage, types ...uint16) (string, []string) {
	out := make([]string, len(types))
	if len(m.Data) < 4 {
		return "", out
	}
	fam := familyName(m.Data[0])
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return fam, out
	}
	for ad.Next() {
		if i := slices.Index(types, ad.Type()); i >= 0 {
			out[i] = ad.String()
		}
	}
	return fam, out
}

func familyName(nfproto byte) string {
	switch nfproto {
	case unix.NFPROTO_IPV4:
		return "ip"
	case unix.NFPROTO_IPV6:
		return "ip6"
	case unix.NFPROTO_INET:
		return "inet"
	case unix.NFPROTO_ARP:
		return "arp"
	case unix.NFPROTO_BRIDGE:
		return "bridge"
	case unix.NFPROTO_NETDEV:
		return "netdev"
	}
	return fmt.Sprintf("family %d", nfproto)
}

// tproxyRouting returns shunt's ip rules (those marked podroute.Proto), both families.
func tproxyRouting() ([]string, error) {
	h, err := vnetlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []string
	for _, fam := range []struct {
		af   int
		name string
	}{{unix.AF_INET, "IPv4"}, {unix.AF_INET6, "IPv6"}} {
		rules, err := h.RuleList(fam.af)
		if err != nil {
			return out, fmt.Errorf("list %s ip rules: %w", fam.name, err)
		}
		for _, r := range rules {
			if r.Protocol == podroute.Proto {
				out = append(out, fmt.Sprintf("ip rule fwmark %#x lookup %d (%s)", r.Mark, r.Table, fam.name))
			}
		}
	}
	return out, nil
}

// readKernel reads what is the kernel's, not the namespace's: release, modules, configuration,
// cgroup v2 and the eBPF probe.
func readKernel(f *facts) {
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		f.kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/modules"); err == nil {
		f.modules = parseModules(data)
	}
	f.config = readConfig(f.kernel)
	if data, err := os.ReadFile("/proc/self/mounts"); err == nil {
		f.mounts = true
		f.cgroup2 = cgroup2Point(data)
	}
	f.bpfErr = shuntebpf.Probe()
}

// readConfig reads the kernel configuration from /proc/config.gz, else /boot/config-RELEASE; nil when
// neither is there.
func readConfig(release string) map[string]string {
	if zf, err := os.Open("/proc/config.gz"); err == nil {
		defer zf.Close()
		if zr, err := gzip.NewReader(zf); err == nil {
			if data, err := io.ReadAll(zr); err == nil {
				return parseConfig(data)
			}
		}
	}
	if data, err := os.ReadFile("/boot/config-" + release); err == nil && bytes.Contains(data, []byte("CONFIG_")) {
		return parseConfig(data)
	}
	return nil
}
