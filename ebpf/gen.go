package ebpf

// The kernel programs are compiled by bpf2go, the cilium/ebpf library's own tool (a tool
// dependency in go.mod), for little-endian machines. `make generate` runs this with Debian's
// clang; the output (redirect_bpfel.go, redirect_bpfel.o) is committed so that building needs no
// clang, and TestGeneratedUpToDate / `make check-generate` catch a stale one.
//go:generate go tool bpf2go -tags linux -target bpfel -type pod_flag -type cidr_kind -type set_kind redirect redirect.c -- -I./include -nostdinc -Wall -Werror
