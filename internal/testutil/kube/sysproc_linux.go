package kube

import "syscall"

// sysProcAttr makes a server die with the test binary, also when it is
// killed (go test -timeout) before its cleanups run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
