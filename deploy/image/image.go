package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations of the image's entry in index.json. Both carry the full reference: podman and skopeo
// read the OCI one, `ctr import` containerd's.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// The image's file system: the binary alone, at /NAME (spec.File: /shunt in the node image,
// /shunt-init in the init image), which is also the entrypoint. The runtime resolves a bare command
// name (the chart's `command: ["shunt"]`) through the image's PATH, hence PATH=/.
const pathEnv = "PATH=/"

// spec is what goes into the image.
type spec struct {
	// Binary is the content of /File.
	Binary []byte
	// File is the binary's name in the image's root directory: shunt or shunt-init.
	File string
	// Ref is the image's full reference (repository:tag), recorded in index.json.
	Ref string
	// Arch and Variant are the platform's, as GOARCH names it; OS is always linux.
	Arch, Variant string
	// Created stamps the config, the history and the layer's file: SOURCE_DATE_EPOCH.
	Created time.Time
	// Labels are the config's labels.
	Labels map[string]string
	// Extra are further static binaries beside /File, by name (the node image's /shunt-cni, the CNI
	// plugin's shim); the entrypoint stays /File.
	Extra []extraFile
}

// extraFile is a binary of the image besides its entrypoint.
type extraFile struct {
	Name string
	Data []byte
}

// image is a built image: its manifest, config and layer, serialised.
type image struct {
	Manifest, Config, Index []byte
	Digest                  v1.Hash // of the manifest: the image's digest
	ConfigDigest            v1.Hash
	Layer                   []byte // gzip-compressed tar
	LayerDigest             v1.Hash
	LayerSize               int64
	LayerUncompressedSize   int64
}

// build returns the image of s. It performs no I/O, and the same s gives the same bytes.
func build(s spec) (*image, error) {
	if !validFile(s.File) {
		return nil, fmt.Errorf("file name %q: want a plain name such as shunt", s.File)
	}
	entrypoint := "/" + s.File
	for _, e := range s.Extra {
		if !validFile(e.Name) || e.Name == s.File {
			return nil, fmt.Errorf("extra file name %q: want a plain name other than %s", e.Name, s.File)
		}
	}
	layerTar, err := layerTar(append([]extraFile{{Name: s.File, Data: s.Binary}}, s.Extra...), s.Created)
	if err != nil {
		return nil, err
	}
	compressed, err := gzipBytes(layerTar)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	diffID, err := layer.DiffID()
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	created := v1.Time{Time: s.Created.UTC()}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: s.Arch,
		Variant:      s.Variant,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{entrypoint},
			Env:        []string{pathEnv},
			WorkingDir: "/",
			Labels:     s.Labels,
		},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
		History: []v1.History{{
			Created:   created,
			CreatedBy: "deploy/image: " + entrypoint + ", the static binary alone",
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			Platform:    &v1.Platform{OS: "linux", Architecture: s.Arch, Variant: s.Variant},
			Annotations: map[string]string{annotationRefName: s.Ref, annotationContainerdName: s.Ref},
		},
	})

	out := &image{Layer: compressed, LayerSize: int64(len(compressed)), LayerUncompressedSize: int64(len(layerTar))}
	if out.Manifest, err = img.RawManifest(); err != nil {
		return nil, err
	}
	if out.Config, err = img.RawConfigFile(); err != nil {
		return nil, err
	}
	if out.Index, err = idx.RawManifest(); err != nil {
		return nil, err
	}
	if out.Digest, err = img.Digest(); err != nil {
		return nil, err
	}
	if out.ConfigDigest, err = img.ConfigName(); err != nil {
		return nil, err
	}
	if out.LayerDigest, err = layer.Digest(); err != nil {
		return nil, err
	}
	return out, nil
}

// validFile reports whether name is a plain file name for the image's root: not empty, no slash,
// not . or ..
func validFile(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// layerTar returns the layer's tar: the file name holding binary, mode 0755, owned by root, stamped
// mtime.
func layerTar(files []extraFile, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     f.Name,
			Mode:     0o755,
			Size:     int64(len(f.Data)),
			ModTime:  mtime.UTC(),
			Format:   tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// gzipBytes compresses b at the best level with an empty gzip header (no name, mtime 0), so the
// output depends on b and the Go release only.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeLayout writes img as an OCI image layout tarball: oci-layout, index.json, then the blobs
// (manifest, config, layer) under blobs/sha256/, in this order, every entry owned by root and
// stamped 1970-01-01 (the layout's own timestamps are no part of the image).
func (img *image) writeLayout(w io.Writer) error {
	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR})
	}
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)),
			ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR,
		}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blob := func(h v1.Hash, data []byte) error {
		return file("blobs/"+h.Algorithm+"/"+h.Hex, data)
	}
	steps := []func() error{
		func() error { return file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)) },
		func() error { return file("index.json", img.Index) },
		func() error { return dir("blobs/") },
		func() error { return dir("blobs/sha256/") },
		func() error { return blob(img.Digest, img.Manifest) },
		func() error { return blob(img.ConfigDigest, img.Config) },
		func() error { return blob(img.LayerDigest, img.Layer) },
		tw.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("image layout: %w", err)
		}
	}
	return nil
}
