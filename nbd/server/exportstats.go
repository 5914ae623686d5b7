package server

// ConnsByExport returns how many connections in the transmission phase
// each export has (exports without one are left out); safe from any
// goroutine.
func (s *Server) ConnsByExport() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.conns))
	for c := range s.conns {
		if c.exp != nil {
			out[c.exp.name]++
		}
	}
	return out
}
