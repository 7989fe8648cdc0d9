package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/shuntmesh/shunt/cni/shim"
)

// Run runs one command the shim handed over, in this process, with the checks skel makes of an
// executed plugin's input, and returns what the plugin would have printed and whether it would have
// exited 1. Only ADD, CHECK and DEL are run here; the shim runs the standalone plugin for the others.
func (p Plugin) Run(req *shim.Request) *shim.Response {
	var out bytes.Buffer
	p.Stdout = &out
	if err := p.run(req); err != nil {
		var e *types.Error
		if !errors.As(err, &e) {
			e = types.NewError(types.ErrInternal, err.Error(), "")
		}
		b, merr := json.Marshal(e)
		if merr != nil {
			b = []byte(fmt.Sprintf(`{"code":%d,"msg":%q}`, types.ErrInternal, e.Error()))
		}
		return &shim.Response{Output: b, Failed: true}
	}
	return &shim.Response{Output: out.Bytes()}
}

func (p *Plugin) run(req *shim.Request) error {
	args := &skel.CmdArgs{ContainerID: req.ContainerID, Netns: req.Netns, IfName: req.IfName, Args: req.Args,
		Path: req.Path, StdinData: req.Stdin}
	var call func(*skel.CmdArgs) error
	switch req.Command {
	case "ADD":
		call = p.CmdAdd
	case "CHECK":
		call = p.CmdCheck
	case "DEL":
		call = p.CmdDel
	default:
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI_COMMAND: %q", req.Command), "")
	}
	if err := checkRequest(req); err != nil {
		return err
	}
	if err := validateName(req.Stdin); err != nil {
		return err
	}
	confVersion, err := (&version.ConfigDecoder{}).Decode(req.Stdin)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if verr := (&version.Reconciler{}).Check(confVersion, SupportedVersions); verr != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI versions", verr.Details())
	}
	if req.Command == "CHECK" {
		ok, err := version.GreaterThanOrEqualTo(confVersion, "0.4.0")
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, err.Error(), "")
		}
		if !ok {
			return types.NewError(types.ErrIncompatibleCNIVersion, "config version does not allow CHECK", "")
		}
	}
	if req.Command == "ADD" {
		// The pod's namespace must not be the one the command runs in: rules would land on the node.
		same, err := cnins.CheckNetNS(req.Netns)
		if err != nil {
			return err
		}
		if same {
			return types.NewError(types.ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
		}
	}
	return call(args)
}

// checkRequest checks the CNI_* variables a command needs, as skel does.
func checkRequest(req *shim.Request) error {
	needNetns := req.Command != "DEL"
	for _, v := range []struct{ name, val string }{
		{"CNI_CONTAINERID", req.ContainerID}, {"CNI_IFNAME", req.IfName}, {"CNI_PATH", req.Path},
	} {
		if v.val == "" {
			return types.NewError(types.ErrInvalidEnvironmentVariables, "required env variables ["+v.name+"] missing", "")
		}
	}
	if needNetns && req.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "required env variables [CNI_NETNS] missing", "")
	}
	if err := utils.ValidateContainerID(req.ContainerID); err != nil {
		return err
	}
	if err := utils.ValidateInterfaceName(req.IfName); err != nil {
		return err
	}
	return nil
}

// validateName checks the configuration's network name, as skel does.
func validateName(stdin []byte) error {
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("error unmarshall network config: %v", err), "")
	}
	if conf.Name == "" {
		return types.NewError(types.ErrInvalidNetworkConfig, "missing network name", "")
	}
	if err := utils.ValidateNetworkName(conf.Name); err != nil {
		return err
	}
	return nil
}
