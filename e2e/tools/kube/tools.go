//go:build tools

// Package kube pins the kube-apiserver command that internal/testutil/kube
// builds with `go build k8s.io/kubernetes/cmd/kube-apiserver`.
package kube

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
