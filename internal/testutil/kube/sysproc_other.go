//go:build !linux

package kube

import "syscall"

// sysProcAttr: only Linux has a parent-death signal; elsewhere servers are
// stopped by the test's cleanups alone.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{}
}
