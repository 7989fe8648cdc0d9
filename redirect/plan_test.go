package redirect

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestValidateReportsEveryError(t *testing.T) {
	c := DefaultConfig()
	c.ProxyPort = 0
	c.Mode = "BOGUS"
	c.ProxyUIDs = []uint32{InvalidID}
	c.ExcludeInterfaces = []string{"eth0;reboot"}
	c.HostIPv4LoopbackCIDR = netip.MustParsePrefix("10.0.0.0/8")
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	for _, want := range []string{"envoy-port", "istio-inbound-interception-mode", `"BOGUS"`, "proxy-uid", "istio-exclude-interfaces",
		`"eth0;reboot"`, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() error lacks %q:\n%v", want, err)
		}
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Errorf("Validate() error is not a *FieldError: %T", err)
	}
	if _, err := Build(c); err == nil {
		t.Error("Build of an invalid Config = nil error")
	}
}

func TestValidateTProxy(t *testing.T) {
	c := DefaultConfig()
	c.Mode = ModeTProxy
	c.TProxyMark = OutboundMark
	c.TProxyRouteTable = 254
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "istio-inbound-tproxy-mark") || !strings.Contains(err.Error(), "istio-inbound-tproxy-route-table") {
		t.Errorf("Validate() = %v, want mark and table rejected", err)
	}
}

func TestValidateOwnerGroups(t *testing.T) {
	c := DefaultConfig()
	c.OwnerGroups = GroupFilter{Include: make([]uint32, MaxOwnerGroupsInclude+1)}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "ISTIO_OUTBOUND_OWNER_GROUPS") {
		t.Errorf("Validate() = %v, want too many groups rejected", err)
	}
}

// TestPlanRulesExplained: every rule carries the flow it serves and why it is there.
func TestPlanRulesExplained(t *testing.T) {
	c := DefaultConfig()
	c.Mode, c.IPv6, c.RedirectDNS, c.CaptureAllDNS, c.DropInvalid = ModeTProxy, true, true, true, true
	c.ExcludeInterfaces, c.KubeVirtInterfaces = []string{"eth9"}, []string{"eth8"}
	c.OwnerGroups = GroupFilter{All: true, Exclude: []uint32{5}}
	plan, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fp := range plan.Families {
		for _, tb := range fp.Tables {
			for _, ch := range tb.Chains {
				for _, r := range ch.Rules {
					n++
					if _, ok := FlowTitle[r.Flow]; !ok || r.Why == "" {
						t.Errorf("%s %s/%s rule %+v: flow %q, why %q", fp.Family, tb.Name, ch.Name, r, r.Flow, r.Why)
					}
				}
			}
		}
	}
	if n < 50 {
		t.Errorf("only %d rules planned", n)
	}
}

func TestPlanFamiliesAndRoutes(t *testing.T) {
	c := DefaultConfig()
	plan, _ := Build(c)
	if len(plan.Families) != 1 || plan.Families[0].Family != IPv4 || plan.Families[0].TProxy != nil {
		t.Fatalf("default plan families = %+v, want IPv4 only without TPROXY", plan.Families)
	}
	c.IPv6, c.Mode = true, ModeTProxy
	plan, _ = Build(c)
	if plan.Family(IPv6) == nil || plan.Family(IPv6).TProxy == nil || len(plan.Family(IPv6).LoopbackAddrs) != 1 {
		t.Fatalf("IPv6 TPROXY plan = %+v", plan.Families)
	}
	// No inbound ports: no TPROXY routing (as istio-iptables).
	c.InboundPorts = PortList{}
	plan, _ = Build(c)
	if plan.Family(IPv4).TProxy != nil {
		t.Error("TPROXY route planned without inbound ports")
	}
}

// TestPlanShape pins down the order of ISTIO_OUTPUT, the heart of the outbound flows.
func TestPlanShape(t *testing.T) {
	plan, _ := Build(DefaultConfig())
	out := plan.Family(IPv4).Table(TableNAT).Chain(ChainOutput)
	var flows []Flow
	for _, r := range out.Rules {
		flows = append(flows, r.Flow)
	}
	want := []Flow{FlowInbound, FlowHairpin, FlowHairpin, FlowProxyOwner, FlowHairpin, FlowHairpin, FlowProxyOwner, FlowLocalhost, FlowOutbound}
	if !reflect.DeepEqual(flows, want) {
		t.Errorf("ISTIO_OUTPUT flows = %v, want %v", flows, want)
	}
	if got := plan.Family(IPv4).Table(TableNAT).Chain("PREROUTING"); got == nil || got.Rules[0].Target.Chain != ChainInbound {
		t.Errorf("PREROUTING = %+v", got)
	}
}

func TestBuildDeterministic(t *testing.T) {
	c := DefaultConfig()
	c.IPv6, c.RedirectDNS = true, true
	c.DNSServers = []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")}
	a, _ := Build(c)
	b, _ := Build(c)
	if !reflect.DeepEqual(a, b) {
		t.Error("Build is not deterministic")
	}
}
