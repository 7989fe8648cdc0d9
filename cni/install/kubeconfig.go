package install

import (
	"bytes"
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigFor returns the plugin's kubeconfig: server, the CA read from caFile (none when empty)
// and the service-account token read from tokenFile, inline, since the plugin runs on the host where
// the installer's files are not.
func kubeconfigFor(server, tokenFile, caFile string) ([]byte, error) {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("service account token: %w", err)
	}
	token = bytes.TrimSpace(token)
	if len(token) == 0 {
		return nil, fmt.Errorf("service account token %s is empty", tokenFile)
	}
	cluster := &clientcmdapi.Cluster{Server: server}
	if caFile != "" {
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cluster CA: %w", err)
		}
		cluster.CertificateAuthorityData = ca
	}
	const name = "shunt-cni"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = cluster
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: string(token)}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: "local", AuthInfo: name}
	cfg.CurrentContext = name
	return clientcmd.Write(*cfg)
}

// ensureKubeconfig writes the plugin's kubeconfig unless it is in place: after a token rotation, it
// is rewritten.
func (in *Installer) ensureKubeconfig() error {
	want, err := kubeconfigFor(in.cfg.APIServer, in.cfg.TokenFile, in.cfg.CAFile)
	if err != nil {
		return err
	}
	have, err := os.ReadFile(in.cfg.KubeconfigFile)
	if err == nil && bytes.Equal(have, want) {
		if fi, err := os.Stat(in.cfg.KubeconfigFile); err == nil && fi.Mode().Perm() == kubeconfigMode {
			return nil
		}
	}
	if err := writeFileAtomic(in.cfg.KubeconfigFile, want, kubeconfigMode); err != nil {
		return err
	}
	if have == nil {
		in.log.Info("wrote plugin kubeconfig", "file", in.cfg.KubeconfigFile, "server", in.cfg.APIServer)
	} else {
		in.log.Info("rewrote plugin kubeconfig: token rotated or file changed", "file", in.cfg.KubeconfigFile)
	}
	return nil
}
