package nfnl

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// errAttr is mdlayher/netlink's error for an attribute whose length is wrong.
var errAttr = errors.New("invalid attribute; length too short or too large")

// typeMask masks the flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER) off an attribute's type.
const typeMask = 0x3fff

// Attrs iterates over netlink attributes — the attributes and errors of mdlayher/netlink's
// AttributeDecoder, whose byte order is big endian here — without allocating: Data aliases the bytes
// given. A rule dump decodes a few hundred attributes, and a process that starts to read it once pays
// for every allocation with fresh pages.
type Attrs struct {
	b    []byte
	i    int
	typ  uint16
	data []byte
	err  error
}

// NewAttrs returns an iterator over the attributes of b. It fails, as NewAttributeDecoder does, when
// a header does not fit.
func NewAttrs(b []byte) (Attrs, error) {
	for i := 0; i < len(b); {
		if len(b)-i < 4 {
			return Attrs{}, errAttr
		}
		i += align(max(int(binary.NativeEndian.Uint16(b[i:])), 4))
	}
	return Attrs{b: b}, nil
}

func align(n int) int { return (n + 3) &^ 3 }

// Next advances to the next attribute; false at the end or on an error (see Err).
func (a *Attrs) Next() bool {
	if a.err != nil || a.i >= len(a.b) {
		return false
	}
	b := a.b[a.i:]
	if len(b) < 4 {
		a.err = errAttr
		return false
	}
	n := int(binary.NativeEndian.Uint16(b))
	switch {
	case n > len(b), n > 0 && n < 4:
		a.err = errAttr
		return false
	case n == 0:
		a.data = b[4:4]
	default:
		a.data = b[4:n:n]
	}
	a.typ = binary.NativeEndian.Uint16(b[2:]) & typeMask
	a.i += align(max(n, 4))
	return true
}

// Type is the current attribute's type, without flags.
func (a *Attrs) Type() uint16 { return a.typ }

// Data is the current attribute's data.
func (a *Attrs) Data() []byte { return a.data }

// Err is the first error met.
func (a *Attrs) Err() error { return a.err }

// Fail records err, when none is recorded yet, ending the iteration.
func (a *Attrs) Fail(err error) {
	if a.err == nil {
		a.err = err
	}
}

// String is the current attribute's data as a string without its trailing NULs.
func (a *Attrs) String() string {
	if a.err != nil {
		return ""
	}
	return string(bytes.TrimRight(a.data, "\x00"))
}

// Uint32 is the current attribute's big-endian 32-bit data; another length is an error.
func (a *Attrs) Uint32() uint32 {
	if b := a.fixed(4, "uint32"); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// Uint64 is the current attribute's big-endian 64-bit data; another length is an error.
func (a *Attrs) Uint64() uint64 {
	if b := a.fixed(8, "uint64"); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// fixed is the current attribute's data when it has n bytes; nil otherwise, recording the error.
func (a *Attrs) fixed(n int, kind string) []byte {
	if a.err != nil {
		return nil
	}
	if len(a.data) != n {
		a.err = fmt.Errorf("netlink: attribute %d is not a %s; length: %d", a.typ, kind, len(a.data))
		return nil
	}
	return a.data
}

// Nested returns an iterator over the attributes nested in the current one. An error, its own or
// one the nested iterator meets (given back with Fail), ends this iteration.
func (a *Attrs) Nested() Attrs {
	if a.err != nil {
		return Attrs{}
	}
	n, err := NewAttrs(a.data)
	if err != nil {
		a.err = err
	}
	return n
}
