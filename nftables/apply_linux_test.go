package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shuntmesh/shunt/internal/testutil"
	"github.com/shuntmesh/shunt/internal/testutil/randconfig"
	"github.com/shuntmesh/shunt/redirect"
)

func build(t *testing.T, cfg redirect.Config) *redirect.Plan {
	t.Helper()
	plan, err := redirect.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &plan
}

var handles = regexp.MustCompile(` # handle \d+`)

// ruleset is `nft list ruleset` of n, without handles (nft only reads here).
func ruleset(t *testing.T, n *testutil.NetNS, args ...string) string {
	t.Helper()
	return n.Run(t, append(append([]string{"nft"}, args...), "list", "ruleset")...)
}

// generation returns the ruleset generation of n, which every committed transaction increments.
func generation(t *testing.T, n *testutil.NetNS) uint32 {
	t.Helper()
	var gen uint32
	err := ns.WithNetNSPath(n.Path(), func(ns.NetNS) error {
		conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		msgs, err := conn.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
		})
		if err != nil {
			return err
		}
		ad, err := netlink.NewAttributeDecoder(msgs[0].Data[4:])
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				gen = ad.Uint32()
			}
		}
		return ad.Err()
	})
	if err != nil {
		t.Fatalf("ruleset generation: %v", err)
	}
	return gen
}

// TestApplyMatchesScript programs random configurations over netlink and loads their printed script
// with `nft -f` in a second namespace: nft must list the same ruleset for both, so the dry run shows
// exactly what Apply programs. Apply commits one transaction, and Check then finds no difference.
func TestApplyMatchesScript(t *testing.T) {
	testutil.RequireRoot(t)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 40 {
		cfg := randconfig.Config(r, injector())
		plan := build(t, cfg)
		a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
		gen := generation(t, a)
		if err := Apply(context.Background(), plan, Options{NetNS: a.Path()}); err != nil {
			t.Fatalf("config %d: apply: %v\n%+v", i, err, cfg)
		}
		if got := generation(t, a) - gen; got != 1 {
			t.Errorf("config %d: apply committed %d transactions, want 1", i, got)
		}
		script, err := Render(plan, RenderOptions{Explain: true})
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "rules.nft")
		if err := os.WriteFile(file, script, 0o600); err != nil {
			t.Fatal(err)
		}
		b.Run(t, "nft", "-f", file)
		if diff := cmp.Diff(ruleset(t, b), ruleset(t, a)); diff != "" {
			t.Errorf("config %d: netlink and script rulesets differ (-script +netlink):\n%s\nconfig: %+v", i, diff, cfg)
		}
		if err := Check(context.Background(), plan, Options{NetNS: a.Path()}); err != nil {
			t.Errorf("config %d: check after apply: %v", i, err)
		}
		if err := Check(context.Background(), plan, Options{NetNS: b.Path()}); err != nil {
			t.Errorf("config %d: check of the script's rules: %v", i, err)
		}
	}
}

// TestLifecycle: a re-run changes nothing; another configuration is drift, refused without Reconcile
// and replaced in one transaction with it; Cleanup removes shunt's tables and leaves every other table,
// iptables-nft's included, byte for byte as it was.
func TestLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	ctx := context.Background()
	foreign := filepath.Join(t.TempDir(), "foreign.nft")
	if err := os.WriteFile(foreign, []byte(`table inet filter {
	chain input { type filter hook input priority 0; policy accept; tcp dport 22 counter accept; }
}
table ip nat {
	chain POSTROUTING { type nat hook postrouting priority srcnat; policy accept; oifname "eth0" masquerade; }
}
table ip6 istio-proxy-nat {
	chain output { type nat hook output priority -100; policy accept; }
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	n.Run(t, "nft", "-f", foreign)
	n.Run(t, "iptables-nft", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-j", "MARK", "--set-mark", "7")
	before := ruleset(t, n, "-a")

	a := injector()
	a.IPv6 = true
	b := a
	b.Mode, b.DropInvalid = redirect.ModeTProxy, true
	opts := Options{NetNS: n.Path()}
	if err := Apply(ctx, build(t, a), opts); err != nil {
		t.Fatal(err)
	}
	applied := ruleset(t, n, "-a")
	if !strings.HasPrefix(applied, before) {
		t.Fatalf("apply changed foreign tables:\nbefore:\n%s\nafter:\n%s", before, applied)
	}
	gen := generation(t, n)
	if err := Apply(ctx, build(t, a), opts); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if g := generation(t, n); g != gen || ruleset(t, n, "-a") != applied {
		t.Errorf("second apply of the same plan changed the ruleset (generation %d → %d)", gen, g)
	}

	err := Apply(ctx, build(t, b), opts)
	if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), "table inet istio-proxy-mangle is missing") {
		t.Errorf("apply of another configuration: %v, want drift naming the missing TPROXY table", err)
	}
	if ruleset(t, n, "-a") != applied {
		t.Error("a refused apply changed the ruleset")
	}
	gen = generation(t, n)
	if err := Apply(ctx, build(t, b), Options{NetNS: n.Path(), Reconcile: true}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if g := generation(t, n); g != gen+1 {
		t.Errorf("reconcile committed %d transactions, want 1", g-gen)
	}
	if err := Check(ctx, build(t, b), opts); err != nil {
		t.Errorf("check after reconcile: %v", err)
	}
	fresh := testutil.NewNetNS(t)
	if err := Apply(ctx, build(t, b), Options{NetNS: fresh.Path()}); err != nil {
		t.Fatal(err)
	}
	strip := func(s string) string { return handles.ReplaceAllString(s, "") }
	if got, want := strip(strings.TrimPrefix(ruleset(t, n, "-a"), before)), strip(ruleset(t, fresh, "-a")); got != want {
		t.Errorf("reconciled tables differ from a fresh apply:\n%s", cmp.Diff(want, got))
	}

	if err := Cleanup(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if after := ruleset(t, n, "-a"); after != before {
		t.Errorf("cleanup did not restore the foreign tables byte for byte:\n%s", cmp.Diff(before, after))
	}
	if err := Cleanup(ctx, opts); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
	if s, err := Read(opts); err != nil || !s.Empty() {
		t.Errorf("read after cleanup: %v, %v", s, err)
	}
}

// TestCheckNamesChanges: a rule another program deletes or adds in shunt's tables is named.
func TestCheckNamesChanges(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNetNS(t)
	plan := build(t, injector())
	opts := Options{NetNS: n.Path()}
	if err := Apply(context.Background(), plan, opts); err != nil {
		t.Fatal(err)
	}
	n.Run(t, "nft", "add rule inet istio-proxy-nat istio-output tcp dport 9 return")
	n.Run(t, "nft", "flush chain inet istio-proxy-nat istio-redirect")
	err := Check(context.Background(), plan, opts)
	for _, want := range []string{
		"istio-proxy-nat istio-redirect: missing rule meta l4proto tcp counter redirect to :15001",
		"istio-proxy-nat istio-output: unexpected rule [meta l4proto tcp th dport 9 return]",
	} {
		if !errors.Is(err, ErrDrift) || !strings.Contains(err.Error(), want) {
			t.Errorf("check: %v\nwant it to name: %s", err, want)
		}
	}
}
