package deps
import (
	_ "github.com/coreos/go-iptables/iptables"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/sys/unix"
	_ "github.com/spf13/cobra"
	_ "github.com/google/go-cmp/cmp"
	_ "k8s.io/api/core/v1"
	_ "sigs.k8s.io/yaml"
	_ "github.com/containernetworking/plugins/pkg/ns"
)
