package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBinaryArgs(t *testing.T) {
	for _, tc := range []struct {
		path, variant string
		want          []string
	}{
		{"/b/shunt-init", "nft", []string{"istio-iptables", "--force-iptables-binary", "nft"}},
		{"/b/pilot-agent", "legacy", []string{"istio-iptables", "--force-iptables-binary", "legacy"}},
		{"/b/istio-iptables", "native", []string{"--native-nftables"}},
	} {
		got := binaryArgs(tc.path, tc.variant)
		if diff := cmp.Diff(slices.Concat(tc.want, injectorArgs), got); diff != "" {
			t.Errorf("binaryArgs(%q, %q) (-want +got):\n%s", tc.path, tc.variant, diff)
		}
	}
}

func TestSumInitTrace(t *testing.T) {
	trace := []byte("init internal/bytealg @0.008 ms, 0 ms clock, 0 bytes, 0 allocs\n" +
		"init runtime @0.11 ms, 0.052 ms clock, 0 bytes, 0 allocs\n" +
		"usage: something else\n" +
		"init go.yaml.in/yaml/v2 @1.2 ms, 0.25 ms clock, 41000 bytes, 500 allocs\n")
	d, n, err := sumInitTrace("x", nil, trace)
	if err != nil || n != 3 || d != 302*time.Microsecond {
		t.Errorf("sumInitTrace = %v, %d, %v; want 302µs, 3, nil", d, n, err)
	}
	if _, _, err := sumInitTrace("x", nil, []byte("Usage: x\n")); err == nil {
		t.Error("no init line: no error")
	}
}

func TestMedianPercentile(t *testing.T) {
	ds := []time.Duration{4, 1, 3, 2}
	if got := median(ds); got != 2 { // (2+3)/2, integer
		t.Errorf("median = %v, want 2", got)
	}
	if got := percentile(ds, 90); got != 4 {
		t.Errorf("p90 = %v, want 4", got)
	}
	if median(nil) != 0 || percentile(nil, 50) != 0 {
		t.Error("empty: want 0")
	}
}

// TestReadLayer reads a layout tarball shaped as deploy/image writes it.
func TestReadLayer(t *testing.T) {
	binary := []byte("\x7fELF a static binary")
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "shunt-init", Mode: 0o755, Size: int64(len(binary))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(binary)
	tw.Close()
	var layer bytes.Buffer
	zw := gzip.NewWriter(&layer)
	zw.Write(layerTar.Bytes())
	zw.Close()

	digest := func(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }
	manifest := []byte(fmt.Sprintf(`{"layers":[{"digest":%q,"size":%d}]}`, digest(layer.Bytes()), layer.Len()))
	index := []byte(fmt.Sprintf(`{"manifests":[{"digest":%q}]}`, digest(manifest)))
	var out bytes.Buffer
	ow := tar.NewWriter(&out)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + digest(manifest)[7:], manifest},
		{"blobs/sha256/" + digest(layer.Bytes())[7:], layer.Bytes()},
	} {
		ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data))})
		ow.Write(f.data)
	}
	ow.Close()
	path := filepath.Join(t.TempDir(), "image.tar")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	l, err := readLayer(path)
	if err != nil {
		t.Fatal(err)
	}
	if l.compressed != int64(layer.Len()) || l.uncompressed != int64(layerTar.Len()) {
		t.Errorf("sizes %d, %d; want %d, %d", l.compressed, l.uncompressed, layer.Len(), layerTar.Len())
	}
	if diff := cmp.Diff([]string{fmt.Sprintf("/shunt-init (-rwxr-xr-x, %d bytes)", len(binary))}, l.files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if l.fileSum != sha256.Sum256(binary) {
		t.Error("fileSum is not the binary's")
	}
}
