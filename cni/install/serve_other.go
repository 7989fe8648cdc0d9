//go:build !linux

package install

// notANetNS: network namespaces are Linux's.
func notANetNS(string) string { return "not Linux" }

// whyNotServing: the agent runs commands on Linux only.
func whyNotServing() string { return "not Linux" }
