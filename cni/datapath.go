package cni

import (
	"errors"

	"github.com/shuntmesh/shunt/cni/meshpod"
	"github.com/shuntmesh/shunt/redirect"
)

// The pod types of meshpod, under the names the plugin has always used.
type (
	Pod       = meshpod.Pod
	Container = meshpod.Container
	EnvVar    = meshpod.EnvVar
)

// Annotations of shunt's own, read by the plugin only.
const (
	// AnnotationMode chooses the data path: "iptables" (the default) or "ebpf", where the node's eBPF
	// agent redirects the app's connections and splices the loopback legs, and the iptables rules stay
	// for inbound capture and as the safety net.
	AnnotationMode = "shunt.io/mode"
	// AnnotationEBPFSockMsg "false" keeps an eBPF pod's connect and getsockopt redirection but not the
	// sk_msg splicing of its loopback sockets (for receivers that read with splice(2)).
	AnnotationEBPFSockMsg = "shunt.io/ebpf-sk-msg"
)

// DataPath is how a captured pod's outbound traffic reaches its proxy.
type DataPath struct {
	EBPF    bool // the node's eBPF agent redirects connections (shunt.io/mode: ebpf)
	SockMsg bool // with EBPF: loopback sockets are spliced with sk_msg
}

// DataPathForPod reads the pod's shunt.io annotations; a bad value is an error naming the annotation.
func DataPathForPod(ann map[string]string) (DataPath, error) {
	var dp DataPath
	var errs []error
	switch v := ann[AnnotationMode]; v {
	case "", "iptables":
	case "ebpf":
		dp.EBPF, dp.SockMsg = true, true
	default:
		errs = append(errs, &redirect.FieldError{Field: "annotation " + AnnotationMode, Value: v, Err: errors.New(`want "iptables" or "ebpf"`)})
	}
	if v, ok := ann[AnnotationEBPFSockMsg]; ok {
		b, err := redirect.ParseBool(v)
		if err != nil {
			errs = append(errs, &redirect.FieldError{Field: "annotation " + AnnotationEBPFSockMsg, Value: v, Err: err})
		}
		dp.SockMsg = dp.EBPF && b
	}
	return dp, errors.Join(errs...)
}
