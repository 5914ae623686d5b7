package wire

// uniqueInfos returns the info types of an NBD_OPT_GO/NBD_OPT_INFO
// request with repeats dropped, in the order first asked: each is
// answered at most once, so a client can't make the server send more
// replies (or bytes) than there are info types by repeating one.
func uniqueInfos(infos []uint16) []uint16 {
	if len(infos) < 2 {
		return infos
	}
	var seen [1 << 16 / 64]uint64
	out := make([]uint16, 0, min(len(infos), 8))
	for _, t := range infos {
		if seen[t/64]&(1<<(t%64)) != 0 {
			continue
		}
		seen[t/64] |= 1 << (t % 64)
		out = append(out, t)
	}
	return out
}
