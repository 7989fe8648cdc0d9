// Package cri runs a real container runtime for the end-to-end tests: Debian's containerd with
// runc, in a node network namespace of its own, with its own root, state and socket, and images
// built from the repository and imported (no registry). Tests drive it over CRI v1 as kubelet
// does: RunPodSandbox with the pod's metadata, annotations and security context, then
// CreateContainer and StartContainer in it. Containerd runs the CNI plugins of the directories
// the test gives, in the node's namespace. It is imported by _test.go files only, and needs root.
package cri
