//go:build linux && (amd64 || arm64 || loong64 || ppc64le || riscv64)

package exectrace

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// The layout of an event in the ring buffer, little endian: kind, pid, comm, filename.
const (
	offKind     = 0
	offPID      = 4
	offComm     = 8
	commLen     = 16 // TASK_COMM_LEN
	offFilename = offComm + commLen
	filenameLen = 256
	eventLen    = offFilename + filenameLen
)

// ringSize is the ring buffer's size: room for 3,600 events (of eventLen and an 8-byte header) that
// come faster than the reader drains them, before one is lost (and counted).
const ringSize = 1 << 20

// The tracepoints' records (events/<group>/<name>/format in tracefs): 8 bytes of common fields, then
// __syscall_nr at 8 and the arguments from 16, 8 bytes each; sched_process_exec's filename is a
// __data_loc at 8 (offset from the record's start in the low 16 bits, length in the high 16).
var tracepoints = []struct {
	group, name string
	prog        string // the program's name (15 bytes at most)
	kind        Kind
	filename    int16 // the offset of the filename pointer (a call) or its __data_loc (a start)
	optional    bool
}{
	{"syscalls", "sys_enter_execve", "shunt_execve", KindCall, 16, false},
	{"syscalls", "sys_enter_execveat", "shunt_execveat", KindCall, 24, true},
	{"sched", "sched_process_exec", "shunt_exec", KindStart, 8, false},
}

// Tracer records exec calls and starts while it runs; Stop ends it.
type Tracer struct {
	coll  *cebpf.Collection
	links []link.Link
	rd    *ringbuf.Reader

	done chan struct{}
	mu   sync.Mutex
	exec []Exec
	err  error // of the reader
}

// Start loads the programs and attaches them to the tracepoints: from its return on, every exec call
// of a process named shunt* and every start of a program named shunt* is recorded. It mounts tracefs
// on /sys/kernel/tracing when no tracefs is mounted (and leaves it there: other processes may use it).
// It requires root (CAP_BPF and CAP_PERFMON).
func Start() (*Tracer, error) {
	if err := ensureTracefs(); err != nil {
		return nil, err
	}
	spec := &cebpf.CollectionSpec{
		Maps: map[string]*cebpf.MapSpec{
			"events": {Name: "shunt_exec_ev", Type: cebpf.RingBuf, MaxEntries: ringSize},
			"lost":   {Name: "shunt_exec_lost", Type: cebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1},
		},
		Programs: map[string]*cebpf.ProgramSpec{},
	}
	for _, tp := range tracepoints {
		spec.Programs[tp.name] = &cebpf.ProgramSpec{
			Name:         tp.prog,
			Type:         cebpf.TracePoint,
			License:      "GPL", // bpf_probe_read_*_str
			Instructions: program(tp.kind, tp.filename),
		}
	}
	coll, err := cebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("load exec tracer: %w", err)
	}
	t := &Tracer{coll: coll, done: make(chan struct{})}
	for _, tp := range tracepoints {
		l, err := link.Tracepoint(tp.group, tp.name, coll.Programs[tp.name], nil)
		if err != nil && tp.optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.close()
			return nil, fmt.Errorf("attach to tracepoint %s/%s: %w", tp.group, tp.name, err)
		}
		t.links = append(t.links, l)
	}
	if t.rd, err = ringbuf.NewReader(coll.Maps["events"]); err != nil {
		t.close()
		return nil, fmt.Errorf("ring buffer reader: %w", err)
	}
	go t.read()
	return t, nil
}

// read appends the ring buffer's events to t.exec until the buffer is flushed (by Stop) or fails.
func (t *Tracer) read() {
	defer close(t.done)
	var rec ringbuf.Record
	for {
		err := t.rd.ReadInto(&rec)
		if errors.Is(err, ringbuf.ErrFlushed) {
			return
		}
		t.mu.Lock()
		if err == nil && len(rec.RawSample) < eventLen {
			err = fmt.Errorf("event of %d bytes, want %d", len(rec.RawSample), eventLen)
		}
		if err != nil {
			t.err = fmt.Errorf("read ring buffer: %w", err)
			t.mu.Unlock()
			return
		}
		t.exec = append(t.exec, decode(rec.RawSample))
		t.mu.Unlock()
	}
}

// decode reads an event of eventLen bytes or more.
func decode(b []byte) Exec {
	return Exec{
		Kind:     Kind(binary.LittleEndian.Uint32(b[offKind:])),
		PID:      binary.LittleEndian.Uint32(b[offPID:]),
		Comm:     cstring(b[offComm : offComm+commLen]),
		Filename: cstring(b[offFilename : offFilename+filenameLen]),
	}
}

// cstring returns b up to its first NUL.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Stop detaches the programs, reads the events still in the ring buffer and releases every link, map
// and program. It returns the events in the order the programs reserved them in the ring buffer, and an error
// when the reader failed or events were lost to a full ring buffer.
func (t *Tracer) Stop() ([]Exec, error) {
	var errs []error
	for _, l := range t.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	t.links = nil
	if err := t.rd.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("flush ring buffer: %w", err))
	} else {
		<-t.done
	}
	var lost uint64
	if err := t.coll.Maps["lost"].Lookup(uint32(0), &lost); err != nil {
		errs = append(errs, fmt.Errorf("read lost events: %w", err))
	} else if lost > 0 {
		errs = append(errs, fmt.Errorf("%d events lost to a full ring buffer", lost))
	}
	errs = append(errs, t.close())
	<-t.done // at once unless the flush failed: then closing the reader ended it
	t.mu.Lock()
	defer t.mu.Unlock()
	errs = append(errs, t.err)
	return t.exec, errors.Join(errs...)
}

// close releases what Start made.
func (t *Tracer) close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	if t.rd != nil {
		errs = append(errs, t.rd.Close())
	}
	t.coll.Close()
	return errors.Join(errs...)
}

// program returns the program of a tracepoint of kind, whose record holds the filename at offset
// filename (a user pointer for a call, a __data_loc for a start). It returns at once unless the current
// process's name starts with Prefix; otherwise it reserves an event in the ring buffer, fills it and
// submits it, or counts it lost when the buffer is full.
func program(kind Kind, filename int16) asm.Instructions {
	prefix := []byte(Prefix)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // the record
		// comm on the stack at fp-16
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -commLen),
		asm.Mov.Imm(asm.R2, commLen),
		asm.FnGetCurrentComm.Call(),
	}
	for i, c := range prefix {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.RFP, int16(i-commLen), asm.Byte),
			asm.JNE.Imm(asm.R1, int32(c), "out"),
		)
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, 0).WithReference("events"),
		asm.Mov.Imm(asm.R2, eventLen),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "lost"),
		asm.Mov.Reg(asm.R7, asm.R0), // the event
		asm.StoreImm(asm.R7, offKind, int64(kind), asm.Word),
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.StoreMem(asm.R7, offPID, asm.R0, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, -commLen, asm.DWord),
		asm.StoreMem(asm.R7, offComm, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.RFP, -commLen+8, asm.DWord),
		asm.StoreMem(asm.R7, offComm+8, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, offFilename),
		asm.Mov.Imm(asm.R2, filenameLen),
	)
	if kind == KindCall {
		insns = append(insns,
			asm.LoadMem(asm.R3, asm.R6, filename, asm.DWord),
			asm.FnProbeReadUserStr.Call(),
		)
	} else {
		insns = append(insns,
			asm.LoadMem(asm.R3, asm.R6, filename, asm.Word),
			asm.And.Imm(asm.R3, 0xffff),
			asm.Add.Reg(asm.R3, asm.R6),
			asm.FnProbeReadKernelStr.Call(),
		)
	}
	return append(insns,
		// A failed read leaves the filename empty: submit the event all the same.
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),
		asm.Ja.Label("out"),

		// lost[0]++
		asm.StoreImm(asm.RFP, -commLen-8, 0, asm.Word).WithSymbol("lost"),
		asm.LoadMapPtr(asm.R1, 0).WithReference("lost"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -commLen-8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),

		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	)
}

// ensureTracefs mounts tracefs on /sys/kernel/tracing unless a tracefs is mounted there or at the
// debugfs path the library also looks at.
func ensureTracefs() error {
	const mountPoint = "/sys/kernel/tracing"
	for _, dir := range []string{mountPoint, "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.TRACEFS_MAGIC {
			return nil
		}
	}
	if err := unix.Mount("tracefs", mountPoint, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs on %s: %w", mountPoint, err)
	}
	return nil
}
