//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package ebpf

import (
	"fmt"
	"os"
	"sync"

	cebpf "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ownerIDsEnv forces the programs of kernels before 6.7 (see taskIDs) when set to "task": for
// tests of that object on a newer kernel.
const ownerIDsEnv = "SHUNT_EBPF_OWNER_IDS"

// taskIDs reports whether this kernel runs the redirectTask object, which judges a connection's
// owner by the real ids of the task calling connect(2) or sendmsg(2), rather than redirect, which
// reads the socket opener's ids as the owner match does but needs kernel BTF and bpf_rdonly_cast
// in cgroup sock_addr programs (probeOwner). Load picks the object by it, and AddPod refuses
// user-namespaced pods when it holds.
var taskIDs = sync.OnceValues(func() (bool, error) {
	if os.Getenv(ownerIDsEnv) == "task" {
		return true, nil
	}
	missing, err := probeOwner()
	return missing != "", err
})

// redirectSpec returns the object this kernel runs.
func redirectSpec() (*cebpf.CollectionSpec, error) {
	task, err := taskIDs()
	if err != nil {
		return nil, err
	}
	if task {
		return loadRedirectTask()
	}
	return loadRedirect()
}

// OwnerIDs names the ids the programs this kernel runs judge a connection's owner by: "socket" (the
// socket opener's fsuid and fsgid in the pod's user namespace, as the owner match) or "task" (the
// calling task's real ids, on kernels before 6.7).
func OwnerIDs() (string, error) {
	task, err := taskIDs()
	if err != nil {
		return "", err
	}
	if task {
		return "task", nil
	}
	return "socket", nil
}

// nsGetUserNS is NS_GET_USERNS (linux/nsfs.h): the user namespace that owns a namespace.
const nsGetUserNS = 0xb701

// NetNSUserNamespaced reports whether the network namespace at nsPath belongs to another user
// namespace than this process's: a pod with hostUsers: false, whose ids the node sees shifted.
func NetNSUserNamespaced(nsPath string) (bool, error) {
	f, err := os.Open(nsPath)
	if err != nil {
		return false, err
	}
	defer f.Close()
	fd, err := unix.IoctlRetInt(int(f.Fd()), nsGetUserNS)
	if err != nil {
		return false, fmt.Errorf("%s: NS_GET_USERNS: %w", nsPath, err)
	}
	defer unix.Close(fd)
	var owner, own unix.Stat_t
	if err := unix.Fstat(fd, &owner); err != nil {
		return false, fmt.Errorf("%s: owning user namespace: %w", nsPath, err)
	}
	if err := unix.Stat("/proc/self/ns/user", &own); err != nil {
		return false, err
	}
	return owner.Dev != own.Dev || owner.Ino != own.Ino, nil
}
