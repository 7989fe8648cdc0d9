package ebpf

// The kernel programs are compiled by bpf2go, the cilium/ebpf library's own tool (a tool
// dependency in go.mod), for little-endian machines. `make generate` runs this with Debian's
// clang; the output (redirect_bpfel.go, redirect_bpfel.o) is committed so that building needs no
// clang, and TestGeneratedUpToDate / `make check-generate` catch a stale one.
//
// Two objects come from redirect.c. redirect decides on the socket opener's ids as the owner match
// does (it needs kernel BTF and bpf_rdonly_cast in cgroup sock_addr programs: Linux 6.7);
// redirectTask, built with SHUNT_TASK_IDS, on the real ids of the calling task, for older kernels
// (5.15 and later), which Load picks when Probe finds no bpf_rdonly_cast.
//go:generate go tool bpf2go -tags linux -target bpfel -type pod_flag -type cidr_kind -type set_kind redirect redirect.c -- -I./include -nostdinc -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel redirectTask redirect.c -- -I./include -nostdinc -Wall -Werror -DSHUNT_TASK_IDS
