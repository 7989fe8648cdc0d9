package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// initLine matches a GODEBUG=inittrace=1 line: "init net @1.2 ms, 0.034 ms clock, 1234 bytes, 5 allocs".
var initLine = regexp.MustCompile(`(?m)^init \S+ @[0-9.]+ ms, ([0-9.]+) ms clock,`)

// initTime returns the package initialisation time of binary, run with args and GODEBUG=inittrace=1:
// the sum of the clock times of its init lines, and how many packages ran an init. The exit status
// does not matter (--help may exit 2); the trace does.
func initTime(ctx context.Context, binary string, args ...string) (time.Duration, int, error) {
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	_ = cmd.Run()
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	return sumInitTrace(binary, args, stderr.Bytes())
}

// sumInitTrace returns the sum of the clock times of the inittrace lines in trace, the standard error
// of binary run with args, and their number.
func sumInitTrace(binary string, args []string, trace []byte) (time.Duration, int, error) {
	var sum float64
	lines := initLine.FindAllSubmatch(trace, -1)
	for _, m := range lines {
		f, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("inittrace line %q: %w", m[0], err)
		}
		sum += f
	}
	if len(lines) == 0 {
		return 0, 0, fmt.Errorf("%s %q with GODEBUG=inittrace=1 printed no init line:\n%s", binary, args, trace)
	}
	return time.Duration(sum * float64(time.Millisecond)), len(lines), nil
}

// printInit prints the median package initialisation time of shunt-init and shunt, each run
// opts.n times with --help (which touches nothing).
func printInit(ctx context.Context, w io.Writer, opts *options) error {
	fmt.Fprintf(w, "Package initialisation before main: GODEBUG=inittrace=1 BINARY --help, sum of the init lines' clock,\n")
	fmt.Fprintf(w, "median of %d runs\n", opts.n)
	for _, b := range []struct{ name, path string }{{kindInit, opts.shuntInit}, {kindShunt, opts.shunt}} {
		var ds []time.Duration
		var pkgs int
		for range opts.n {
			d, n, err := initTime(ctx, b.path, "--help")
			if err != nil {
				return err
			}
			ds, pkgs = append(ds, d), n
		}
		target := ""
		if b.name == kindInit {
			target = fmt.Sprintf("   (target <= %.1f ms)", targetInitMs)
		}
		fmt.Fprintf(w, "  %-10s  %5.3f ms  p90 %5.3f ms  %3d packages  %s%s\n", b.name,
			float64(median(ds))/float64(time.Millisecond), float64(percentile(ds, 90))/float64(time.Millisecond),
			pkgs, b.path, target)
	}
	return nil
}

// printImage prints the size of the init image's layer, as a registry stores it and a node pulls it,
// when opts.initImage exists.
func printImage(w io.Writer, opts *options) error {
	if _, err := os.Stat(opts.initImage); errors.Is(err, os.ErrNotExist) {
		_, err := fmt.Fprintf(w, "Init image: %s not found (make image): size not measured\n", opts.initImage)
		return err
	}
	l, err := readLayer(opts.initImage)
	if err != nil {
		return fmt.Errorf("init image %s: %w", opts.initImage, err)
	}
	fmt.Fprintf(w, "Init image %s: one layer holding %s\n", opts.initImage, strings.Join(l.files, ", "))
	fmt.Fprintf(w, "  layer %.2f MiB compressed (%d bytes; target <= %d MiB), %.2f MiB uncompressed\n",
		mib(l.compressed), l.compressed, targetLayerMiB, mib(l.uncompressed))
	bin, err := os.ReadFile(opts.shuntInit)
	if err != nil {
		return err
	}
	if sha256.Sum256(bin) != l.fileSum {
		fmt.Fprintf(w, "  note: its binary is not %s (rebuilt since?): run `make image`\n", opts.shuntInit)
	}
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// layer describes the single layer of an OCI image layout tarball's first image.
type layer struct {
	compressed, uncompressed int64
	files                    []string // the layer's entries
	fileSum                  [32]byte // SHA-256 of the last regular file's content
}

// readLayer reads the OCI image layout tarball path: index.json, the first manifest, its one layer.
func readLayer(path string) (*layer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	blobs := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if blobs[h.Name], err = io.ReadAll(tr); err != nil {
			return nil, err
		}
	}
	type descriptor struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	}
	blob := func(d descriptor) ([]byte, error) {
		alg, hex, ok := bytes.Cut([]byte(d.Digest), []byte(":"))
		if !ok {
			return nil, fmt.Errorf("digest %q", d.Digest)
		}
		b, ok := blobs["blobs/"+string(alg)+"/"+string(hex)]
		if !ok {
			return nil, fmt.Errorf("no blob %s", d.Digest)
		}
		return b, nil
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	if len(index.Manifests) == 0 {
		return nil, errors.New("index.json lists no manifest")
	}
	mb, err := blob(index.Manifests[0])
	if err != nil {
		return nil, err
	}
	var manifest struct{ Layers []descriptor }
	if err := json.Unmarshal(mb, &manifest); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if len(manifest.Layers) != 1 {
		return nil, fmt.Errorf("%d layers, want 1", len(manifest.Layers))
	}
	lb, err := blob(manifest.Layers[0])
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(lb))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	l := &layer{compressed: int64(len(lb))}
	cr := &countingReader{r: zr}
	lt := tar.NewReader(cr)
	for {
		h, err := lt.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		l.files = append(l.files, fmt.Sprintf("/%s (%s, %d bytes)", h.Name, h.FileInfo().Mode(), h.Size))
		if h.Typeflag == tar.TypeReg {
			s := sha256.New()
			if _, err := io.Copy(s, lt); err != nil {
				return nil, fmt.Errorf("layer: %w", err)
			}
			copy(l.fileSum[:], s.Sum(nil))
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil { // the tar's padding
		return nil, fmt.Errorf("layer: %w", err)
	}
	l.uncompressed = cr.n
	return l, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
