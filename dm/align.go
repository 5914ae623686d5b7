package dm

import "unsafe"

// alignedBuf returns n bytes of the Go heap aligned to 4 KiB, the most
// any O_DIRECT device asks for. (The only unsafe code in dm.)
func alignedBuf(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (align - 1))
	if off != 0 {
		off = align - off
	}
	return b[off : off+n : off+n]
}
