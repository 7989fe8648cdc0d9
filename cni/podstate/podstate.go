// Package podstate is the node's record of the pods the CNI plugin captured: for each, the sandbox's
// network namespace, the pod, the settings its rules were planned from and the backend that holds
// them. The plugin writes a record when ADD programs a pod and removes it on DEL; the node agent reads
// them to act on every meshed pod of its node without the API server (a node-wide migration between
// backends, the drift audit).
//
// Records live in a directory on the node's tmpfs (/var/run/shunt/pods by default), one JSON file per
// sandbox, named by its container ID: a reboot empties it, as it empties the pods' namespaces. Beside
// them, dot files List skips: the node agent's marker of since when the installed plugin records pods
// (MarkRecording), and the lock that a migration and the drift audit hold (Lock).
package podstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shuntmesh/shunt/redirect"
)

// DefaultDir is where the plugin keeps its records when the conflist does not say otherwise.
const DefaultDir = "/var/run/shunt/pods"

// Version is the format of the records this package writes. The plugin (on the host) and the node
// agent (in its image) may be of two releases during an upgrade: a reader refuses a format it does not
// know rather than guess.
const Version = 1

// Record is what the plugin knows of one pod sandbox it captured.
type Record struct {
	Version     int    `json:"version"`
	ContainerID string `json:"container_id"`
	// NetNS is the sandbox's network namespace path, as the runtime passed it to ADD.
	NetNS     string `json:"netns"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// Backend holds the rules: "iptables-nft", "iptables-legacy" or "nftables".
	Backend string `json:"backend"`
	// Config is what the rules were planned from.
	Config redirect.Config `json:"config"`
	// EBPF is set when the pod was registered with the node's eBPF agent, whose maps are pinned in
	// EBPFPinDir; IPs and SockMsg are what it was registered with.
	EBPF       bool         `json:"ebpf,omitempty"`
	EBPFPinDir string       `json:"ebpf_pin_dir,omitempty"`
	IPs        []netip.Addr `json:"ips,omitempty"`
	SockMsg    bool         `json:"sockmsg,omitempty"`
	// Updated is when the record was last written (ADD, or a migration).
	Updated time.Time `json:"updated"`
}

// Pod is the pod's "namespace/name".
func (r *Record) Pod() string { return r.Namespace + "/" + r.Name }

// Store is the directory of records.
type Store struct{ Dir string }

const ext = ".json"

// path returns the file of containerID, refusing IDs that are not one path element.
func (s Store) path(containerID string) (string, error) {
	if containerID == "" || containerID == "." || containerID == ".." || strings.ContainsAny(containerID, "/\x00") {
		return "", fmt.Errorf("container ID %q: not a file name", containerID)
	}
	return filepath.Join(s.Dir, containerID+ext), nil
}

// Put writes r, replacing the record of the same container, atomically: a reader sees the old record
// or the new one.
func (s Store) Put(r Record) error {
	path, err := s.path(r.ContainerID)
	if err != nil {
		return err
	}
	r.Version = Version
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	// A temporary name List skips (no .json suffix), renamed over the record.
	f, err := os.CreateTemp(s.Dir, "."+r.ContainerID+"-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write the record of %s: %w", r.ContainerID, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// Delete removes the record of containerID; a record that does not exist is no error.
func (s Store) Delete(containerID string) error {
	path, err := s.path(containerID)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Get reads the record of containerID; fs.ErrNotExist when there is none.
func (s Store) Get(containerID string) (Record, error) {
	path, err := s.path(containerID)
	if err != nil {
		return Record{}, err
	}
	return read(path)
}

// List returns every record, ordered by pod and container ID. A directory that does not exist holds
// none. Records that cannot be read are reported in the error, after the ones that could: one bad file
// must not hide the other pods.
func (s Store) List() ([]Record, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var recs []Record
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ext) {
			continue
		}
		r, err := read(filepath.Join(s.Dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b Record) int {
		if c := strings.Compare(a.Pod(), b.Pod()); c != 0 {
			return c
		}
		return strings.Compare(a.ContainerID, b.ContainerID)
	})
	return recs, errors.Join(errs...)
}

func read(path string) (Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Record{}, err
	}
	r, err := Parse(data)
	if err != nil {
		return Record{}, fmt.Errorf("record %s: %w", path, err)
	}
	if want := strings.TrimSuffix(filepath.Base(path), ext); r.ContainerID != want {
		return Record{}, fmt.Errorf("record %s: holds container ID %q", path, r.ContainerID)
	}
	return r, nil
}

// Parse decodes a record and checks what the agent relies on: a container ID, an absolute namespace
// path, the pod's name, a known backend and valid settings.
func Parse(data []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return Record{}, err
	}
	if r.Version != Version {
		return Record{}, fmt.Errorf("record format %d: this release reads format %d", r.Version, Version)
	}
	var errs []error
	bad := func(field, value string, why string) {
		errs = append(errs, &redirect.FieldError{Field: field, Value: value, Err: errors.New(why)})
	}
	if r.ContainerID == "" {
		bad("container_id", "", "empty")
	}
	if !filepath.IsAbs(r.NetNS) {
		bad("netns", r.NetNS, "not an absolute path")
	}
	if r.Namespace == "" || r.Name == "" {
		bad("namespace/name", r.Namespace+"/"+r.Name, "the pod is not named")
	}
	switch r.Backend {
	case "iptables-nft", "iptables-legacy", "nftables":
	default:
		bad("backend", r.Backend, `want "iptables-nft", "iptables-legacy" or "nftables"`)
	}
	if r.EBPF && !filepath.IsAbs(r.EBPFPinDir) {
		bad("ebpf_pin_dir", r.EBPFPinDir, "not an absolute path")
	}
	if err := r.Config.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("config: %w", err))
	}
	return r, errors.Join(errs...)
}
