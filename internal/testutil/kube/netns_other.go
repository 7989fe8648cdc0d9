//go:build !linux

package kube

import "errors"

func enterNetNS(string) error {
	return errors.New("network namespaces: not supported")
}
