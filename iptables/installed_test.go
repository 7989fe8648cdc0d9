package iptables

import (
	"testing"

	"github.com/shuntmesh/shunt/redirect"
)

func TestInstalledString(t *testing.T) {
	for _, tc := range []struct {
		state State
		want  string
	}{
		{State{"nat": {
			Owned:   map[string][]string{"ISTIO_OUTPUT": nil, "ISTIO_INBOUND": nil},
			Builtin: map[string][]string{"PREROUTING": {"-p tcp -j ISTIO_INBOUND"}, "OUTPUT": {"-j ISTIO_OUTPUT"}},
		}}, "iptables-nft IPv4: chains ISTIO_INBOUND, ISTIO_OUTPUT; 2 jumps"},
		{State{"mangle": {
			Owned:   map[string][]string{"ISTIO_INBOUND": nil},
			Builtin: map[string][]string{"PREROUTING": {"-p tcp -j ISTIO_INBOUND", "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"}},
		}}, "iptables-nft IPv4: chains ISTIO_INBOUND; 1 jump and 1 other rule in built-in chains"},
		{State{"mangle": {
			Builtin: map[string][]string{"OUTPUT": {"-o lo -p tcp -m mark --mark 0x539 -j RETURN"}},
		}}, "iptables-nft IPv4: 1 rule in built-in chains"},
	} {
		if got := (Installed{Variant: VariantNFT, Family: redirect.IPv4, State: tc.state}).String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
