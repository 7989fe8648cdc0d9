package backend_test

import (
	"testing"

	"github.com/shuntmesh/shunt/backend"
	"github.com/shuntmesh/shunt/iptables"
)

// TestForNewPods: the configuration decides first, then the kernel, never a namespace's tables.
func TestForNewPods(t *testing.T) {
	kernel := "iptables-legacy"
	if iptables.KernelHasNFT() {
		kernel = "iptables-nft"
	}
	for _, tc := range []struct {
		s    backend.Settings
		want string
	}{
		{backend.Settings{NativeNFTables: true}, "nftables"},
		{backend.Settings{IptablesVariant: "legacy"}, "iptables-legacy"},
		{backend.Settings{IptablesVariant: "nft"}, "iptables-nft"},
		{backend.Settings{NetNS: "/nonexistent"}, kernel},
	} {
		if got := backend.ForNewPods(tc.s); got.Backend != tc.want || got.Reason == "" {
			t.Errorf("ForNewPods(%+v) = %+v, want %s with a reason", tc.s, got, tc.want)
		}
	}
}
