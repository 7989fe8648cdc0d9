package backend

import "github.com/shuntmesh/shunt/iptables"

// ForNewPods is the choice Select makes for a new pod's namespace, which holds no tables yet, under s
// (its NetNS is not read): the configured backend and variant, else iptables-nft when the kernel has
// nf_tables, else iptables-legacy. The node agent logs and exports it once: it depends on the
// configuration and the kernel only, so it is the same for every new pod and every agent restart.
func ForNewPods(s Settings) Choice {
	switch {
	case s.NativeNFTables:
		return Choice{Backend: "nftables", Reason: "native nftables configured"}
	case s.IptablesVariant != "":
		return Choice{Backend: "iptables-" + s.IptablesVariant, Reason: "iptables variant configured"}
	case iptables.KernelHasNFT():
		return Choice{Backend: "iptables-nft", Reason: "a new pod holds no tables; this kernel has nf_tables"}
	}
	return Choice{Backend: "iptables-legacy", Reason: "a new pod holds no tables; this kernel has no nf_tables"}
}
