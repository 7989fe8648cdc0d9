package redirect

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePortList(t *testing.T) {
	tests := []struct {
		in      string
		want    PortList
		wantErr string
	}{
		{in: "", want: PortList{}},
		{in: "*", want: PortList{All: true}},
		{in: " * ", want: PortList{All: true}},
		{in: "80,443", want: PortList{Ports: []uint16{80, 443}}},
		{in: "6000,7000,", want: PortList{Ports: []uint16{6000, 7000}}},
		{in: "1, 65535", want: PortList{Ports: []uint16{1, 65535}}},
		{in: "0", wantErr: `"0" is not a port`},
		{in: "70000", wantErr: `"70000" is not a port`},
		{in: "abc", wantErr: `"abc" is not a port`},
		{in: "80,*", wantErr: "'*' must stand alone"},
		{in: "-1", wantErr: "not a port"},
		{in: "80;rm -rf /", wantErr: "not a port"},
		{in: "1000:2000", wantErr: "not a port"},
	}
	for _, tt := range tests {
		got, err := ParsePortList(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortList(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePortList(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParsePortList(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestParsePortsRejectsWildcard(t *testing.T) {
	if _, err := ParsePorts("*"); err == nil {
		t.Error("ParsePorts(*) = nil error, want '*' rejected in an exclude list")
	}
	if _, err := ParsePrefixes("*"); err == nil {
		t.Error("ParsePrefixes(*) = nil error, want '*' rejected in an exclude list")
	}
}

func TestParsePrefixList(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "10.0.0.0", "abc", "::/129", "fe80::/10%eth0", "10.0.0.0/8,*", "1.2.3.4/8$(id)", "::ffff:1.2.3.0/120"} {
		if _, err := ParsePrefixList(bad); err == nil {
			t.Errorf("ParsePrefixList(%q) = nil error", bad)
		}
	}
	got, err := ParsePrefixList("10.0.0.0/8, 2001:db8::/32,")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	if diff := cmp.Diff(want, got.Prefixes, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseIDs(t *testing.T) {
	if got, err := ParseIDs("1337,0, 42"); err != nil || !cmp.Equal(got, []uint32{1337, 0, 42}) {
		t.Errorf("ParseIDs = %v, %v", got, err)
	}
	for _, bad := range []string{"-1", "abc", "4294967295", "1e3", "1337 1338"} {
		if _, err := ParseIDs(bad); err == nil {
			t.Errorf("ParseIDs(%q) = nil error", bad)
		}
	}
}

func TestParseInterfaces(t *testing.T) {
	if got, err := ParseInterfaces("eth0,veth+,not-istio-nic,a.b_c"); err != nil || len(got) != 4 {
		t.Errorf("ParseInterfaces = %v, %v", got, err)
	}
	for _, bad := range []string{"averyveryverylongname", "eth0;ls", "eth 0", "eth/0", "..", "+", "eth0`id`", "$(reboot)"} {
		if _, err := ParseInterfaces(bad); err == nil {
			t.Errorf("ParseInterfaces(%q) = nil error", bad)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"REDIRECT": ModeRedirect, "tproxy": ModeTProxy, " TPROXY ": ModeTProxy} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseMode("NONE"); err == nil {
		t.Error("ParseMode(NONE) = nil error")
	}
}

func TestParseGroups(t *testing.T) {
	groups := ParseGroupFile([]byte("root:x:0:\n# comment\nbroken\njava:x:4242:a,b\nftp:x:4243:\njava:x:9999:\n"))
	if diff := cmp.Diff(map[string]uint32{"root": 0, "java": 4242, "ftp": 4243}, groups); diff != "" {
		t.Errorf("ParseGroupFile (-want +got):\n%s", diff)
	}
	f, err := ParseGroupFilter("java,202", "", groups)
	if err != nil || f.All || !cmp.Equal(f.Include, []uint32{4242, 202}) {
		t.Errorf("include filter = %+v, %v", f, err)
	}
	f, err = ParseGroupFilter("*", "888,ftp", groups)
	if err != nil || !f.All || !cmp.Equal(f.Exclude, []uint32{888, 4243}) {
		t.Errorf("exclude filter = %+v, %v", f, err)
	}
	_, err = ParseGroupFilter("", "nosuchgroup", groups)
	if err == nil || !strings.Contains(err.Error(), "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE") || !strings.Contains(err.Error(), "nosuchgroup") {
		t.Errorf("unknown group error = %v, want it to name the variable and the group", err)
	}
}

func TestParseResolvConf(t *testing.T) {
	got := ParseResolvConf([]byte("# x\nsearch a.b\nnameserver 10.96.0.10\nnameserver fd00::10\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n"))
	want := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")}
	if !cmp.Equal(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("ParseResolvConf = %v, want %v", got, want)
	}
}

// Fuzz targets for every parser: no input may panic, and accepted values must satisfy the invariants
// the engine relies on.

func FuzzParsePortList(f *testing.F) {
	for _, s := range []string{"", "*", "80,443", "6000,7000,", "0", "70000", "a,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pl, err := ParsePortList(s)
		if err != nil {
			return
		}
		for _, p := range pl.Ports {
			if p == 0 {
				t.Fatalf("ParsePortList(%q) accepted port 0", s)
			}
		}
		if pl.All && len(pl.Ports) > 0 {
			t.Fatalf("ParsePortList(%q) = all and a list", s)
		}
	})
}

func FuzzParsePrefixList(f *testing.F) {
	for _, s := range []string{"*", "10.0.0.0/8", "2001:db8::/32,1.2.3.4/32", "10.0.0.0/33", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pl, err := ParsePrefixList(s)
		if err != nil {
			return
		}
		for _, p := range pl.Prefixes {
			if !p.IsValid() || p.Addr().Zone() != "" {
				t.Fatalf("ParsePrefixList(%q) accepted %v", s, p)
			}
		}
	})
}

func FuzzParseLists(f *testing.F) {
	for _, s := range []string{"1337", "1,2", "eth0,eth1", "127.0.0.53,::1", "TPROXY", "true"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ids, err := ParseIDs(s); err == nil {
			for _, id := range ids {
				if id == InvalidID {
					t.Fatalf("ParseIDs(%q) accepted -1", s)
				}
			}
		}
		if names, err := ParseInterfaces(s); err == nil {
			for _, n := range names {
				if ValidateInterfaceName(n) != nil || strings.ContainsAny(n, " ;$`|&<>'\"\\") {
					t.Fatalf("ParseInterfaces(%q) accepted %q", s, n)
				}
			}
		}
		ParseAddrs(s)
		ParseMode(s)
		ParseBool(s)
		ParseUint32(s)
	})
}

func FuzzParseGroupFile(f *testing.F) {
	f.Add([]byte("root:x:0:\njava:x:4242:a,b\n"), "java,1")
	f.Fuzz(func(t *testing.T, data []byte, list string) {
		groups := ParseGroupFile(data)
		ids, err := ParseGroups(list, groups)
		if err == nil && len(ids) > 0 && strings.TrimSpace(list) == "" {
			t.Fatalf("ParseGroups(%q) = %v from an empty list", list, ids)
		}
	})
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 10.0.0.1\nnameserver ::1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, a := range ParseResolvConf(data) {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("ParseResolvConf accepted %v", a)
			}
		}
	})
}
