package install

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// notANetNS says why path is not a network namespace this process can enter, or "".
func notANetNS(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err.Error()
	}
	if uint64(st.Type) != unix.NSFS_MAGIC && uint64(st.Type) != unix.PROC_SUPER_MAGIC {
		return fmt.Sprintf("not a namespace file (file system 0x%x)", st.Type)
	}
	return ""
}

// Capabilities the agent needs to run a pod's commands: enter its network namespace and program it.
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// whyNotServing says why this process cannot run the shim's commands, or "" when it can.
func whyNotServing() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return "read capabilities: " + err.Error()
	}
	eff := uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "NET_ADMIN"}, {capSysAdmin, "SYS_ADMIN"}} {
		if eff&(1<<c.bit) == 0 {
			return "the agent lacks the capability " + c.name
		}
	}
	return ""
}
