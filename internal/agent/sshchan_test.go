package agent

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
)

func framePair(t *testing.T) (*FrameConn, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return NewFrameConn(a), b
}

func TestFrameRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, r := NewFrameConn(a), NewFrameConn(b)
	big := bytes.Repeat([]byte("x"), 2*MaxFramePayload+10)
	go func() {
		_, _ = w.Writer(FrameData).Write(big)
		_ = w.WriteFrame(FrameEOF, nil)
		_ = w.WriteRequest(ChannelRequest{Type: "exit-status", Payload: []byte{0, 0, 0, 3}})
		_ = w.WriteRequest(ChannelRequest{Type: "pty-req", WantReply: true})
		_ = w.WriteReply(true)
		_ = w.WriteWindow(12345)
		w.Close()
	}()
	// A long write is split at MaxFramePayload.
	for _, want := range []int{MaxFramePayload, MaxFramePayload, 10} {
		typ, p, err := r.ReadFrame()
		if err != nil || typ != FrameData || len(p) != want {
			t.Fatalf("data frame: %v %d bytes, %v; want %d bytes", typ, len(p), err, want)
		}
	}
	if typ, p, err := r.ReadFrame(); err != nil || typ != FrameEOF || len(p) != 0 {
		t.Fatalf("eof frame: %v %q %v", typ, p, err)
	}
	for _, want := range []ChannelRequest{{Type: "exit-status", Payload: []byte{0, 0, 0, 3}}, {Type: "pty-req", WantReply: true, Payload: []byte{}}} {
		typ, p, err := r.ReadFrame()
		if err != nil || typ != FrameRequest {
			t.Fatalf("request frame: %v %v", typ, err)
		}
		got, err := ParseRequest(p)
		if err != nil || got.Type != want.Type || got.WantReply != want.WantReply || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("request %+v, %v; want %+v", got, err, want)
		}
	}
	if typ, p, err := r.ReadFrame(); err != nil || typ != FrameReply {
		t.Fatalf("reply frame: %v %v", typ, err)
	} else if ok, err := ParseReply(p); !ok || err != nil {
		t.Fatalf("reply %v %v", ok, err)
	}
	if typ, p, err := r.ReadFrame(); err != nil || typ != FrameWindow {
		t.Fatalf("window frame: %v %v", typ, err)
	} else if n, err := ParseWindow(p); n != 12345 || err != nil {
		t.Fatalf("window %d %v", n, err)
	}
	if _, _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("after close: %v, want io.EOF", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	hdr := func(typ byte, n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{typ}, n) }
	for _, tc := range []struct {
		name, want string
		raw        []byte
	}{
		{"unknown type", "unknown frame type 9", hdr(9, 0)},
		{"type zero", "unknown frame type 0", hdr(0, 0)},
		{"oversized payload", "exceeds", hdr(byte(FrameData), MaxFramePayload+1)},
		{"truncated header", "unexpected EOF", []byte{1, 0}},
		{"truncated payload", "unexpected EOF", append(hdr(byte(FrameData), 10), "abc"...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, peer := framePair(t)
			go func() { peer.Write(tc.raw); peer.Close() }()
			if _, _, err := r.ReadFrame(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	for _, p := range [][]byte{nil, {0}, {2, 1, 'a'}, {0, 0}, {0, 5, 'a'}} {
		if _, err := ParseRequest(p); err == nil {
			t.Errorf("ParseRequest(%v) accepted", p)
		}
	}
	for _, p := range [][]byte{nil, {2}, {1, 1}} {
		if _, err := ParseReply(p); err == nil {
			t.Errorf("ParseReply(%v) accepted", p)
		}
	}
	for _, p := range [][]byte{nil, {1, 2, 3}, {1, 2, 3, 4, 5}} {
		if _, err := ParseWindow(p); err == nil {
			t.Errorf("ParseWindow(%v) accepted", p)
		}
	}
	w, _ := framePair(t)
	if err := w.WriteRequest(ChannelRequest{Type: strings.Repeat("r", 256)}); err == nil {
		t.Error("a 256-byte request type was sent")
	}
	if err := w.WriteFrame(FrameReply, make([]byte, MaxFramePayload+1)); err == nil {
		t.Error("an oversized reply frame was sent")
	}
}
