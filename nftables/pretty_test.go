package nftables

import "testing"

// TestPretty: the canonical expressions of the rules shunt's plans hold (read from the kernel) in nft's
// words, and expressions it does not know left as they are.
func TestPretty(t *testing.T) {
	for _, tc := range []struct{ exprs, want string }{
		{"counter; accept", "counter accept"},
		{"counter; immediate r1 39050000; meta mark set r1", "counter meta mark set 1337"},
		{"meta iifname r1; r1 == 6c6f0000000000000000000000000000; meta l4proto r1; r1 == 06; meta mark r1; r1 != 3a050000; counter; return",
			`iifname "lo" meta l4proto tcp meta mark != 1338 counter return`},
		{"meta iifname r1; r1 == 6c6f0000000000000000000000000000; meta l4proto r1; r1 == 06; meta nfproto r1; r1 == 0a; payload network+8/16 r1; r1 == 00000000000000000000000000000006; counter; return",
			`iifname "lo" meta l4proto tcp meta nfproto ipv6 ip6 saddr ::6 counter return`},
		{"meta l4proto r1; r1 == 06; ct state r1 dir=0; bitwise r1 r1 4 &06000000 ^00000000; r1 != 00000000; counter; jump istio-divert",
			"meta l4proto tcp ct state established,related counter jump istio-divert"},
		{"meta l4proto r1; r1 == 06; payload transport+2/2 r1; r1 == 270f; counter; return", "meta l4proto tcp th dport 9999 counter return"},
		{"meta l4proto r1; r1 == 06; meta nfproto r1; r1 == 02; payload network+16/4 r1; r1 != 7f000001; immediate r1 3a9e; tproxy:08000100000000020800030000000001; immediate r1 39050000; meta mark set r1; counter; accept",
			"meta l4proto tcp meta nfproto ipv4 ip daddr != 127.0.0.1 tproxy ip to :15006 meta mark set 1337 counter accept"},
		{"meta l4proto r1; r1 == 06; ct mark r1 dir=0; r1 == 39050000; counter; ct mark r1 dir=0; meta mark set r1",
			"meta l4proto tcp ct mark 1337 counter meta mark set ct mark"},
		{"meta l4proto r1; r1 == 06; meta mark r1; r1 == 39050000; counter; meta mark r1; ct mark set r1 dir=0",
			"meta l4proto tcp meta mark 1337 counter ct mark set meta mark"},
		{"meta l4proto r1; r1 == 06; counter; immediate r1 3a9e; redir r1 r1 0x2", "meta l4proto tcp counter redirect to :15006"},
		{"meta nfproto r1; r1 == 02; payload network+16/1 r1; r1 == 0a; counter; return", "meta nfproto ipv4 ip daddr 10.0.0.0/8 counter return"},
		{"meta nfproto r1; r1 == 0a; payload network+24/2 r1; r1 == fd00; counter; return", "meta nfproto ipv6 ip6 daddr fd00::/16 counter return"},
		{"meta oifname r1; r1 == 6c6f0000000000000000000000000000; meta l4proto r1; r1 == 06; payload transport+2/2 r1; lookup r1 {0035,3aa0} invert=true; meta skuid r1; r1 == 39050000; counter; jump istio-in-redirect",
			`oifname "lo" meta l4proto tcp th dport != { 53, 15008 } meta skuid 1337 counter jump istio-in-redirect`},
		{"meta l4proto r1; r1 == 11; payload transport+0/2 r1; r1 == 3acd; meta skgid r1; r1 == 39050000; counter; immediate r1 0200; ct zone set r1 dir=0",
			"meta l4proto udp th sport 15053 meta skgid 1337 counter ct zone set 2"},
		{"weird:00ff; r9 == 01; counter", "weird:00ff r9 == 01 counter"},
	} {
		if got := Pretty(tc.exprs); got != tc.want {
			t.Errorf("Pretty(%q)\n got %s\nwant %s", tc.exprs, got, tc.want)
		}
	}
}

func FuzzPretty(f *testing.F) {
	f.Add("meta l4proto r1; r1 == 06; counter; immediate r1 3a9e; redir r1 r1 0x2")
	f.Add("meta l4proto r1; r1 == 06; ct state r1 dir=0; bitwise r1 r1 4 &06000000 ^00000000; r1 != 00000000; counter; jump x")
	f.Add("payload network+16/1 r1; r1 == 0a; lookup r1 {0035,zz} invert=true")
	f.Fuzz(func(t *testing.T, s string) { _ = Pretty(s) })
}
