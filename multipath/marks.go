package multipath

import "sort"

// Operator marks: the paths an operator failed (FailPath), by map name
// and path name as the table names it. A mark outlives the table: a
// table that goes live later naming the path starts with it failed and
// its checker paused, as multipathd keeps a path failed by hand failed
// until it is reinstated. The methods below let the daemon save and
// restore the marks; FailPath and ReinstatePath set and drop them on
// live maps.

// OperatorFailed lists the paths the operator failed in the map named
// mapName, whether or not its live table names them, sorted.
func (c *Checker) OperatorFailed(mapName string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k := range c.mu.operator {
		if k[0] == mapName {
			out = append(out, k[1])
		}
	}
	sort.Strings(out)
	return out
}

// MarkOperatorFailed records that the operator failed dev in the map
// named mapName, without touching a live table (FailPath does that): a
// table that goes live after it starts with the path failed. It is how
// marks are restored before their map's table is loaded.
func (c *Checker) MarkOperatorFailed(mapName, dev string) {
	c.mu.Lock()
	c.mu.operator[[2]string{mapName, dev}] = true
	c.mu.Unlock()
}

// DropOperatorMark forgets the operator's mark of dev in the map named
// mapName, reporting whether there was one. A live map's path is not
// reinstated (ReinstatePath does that); this is for a path its live
// table no longer names.
func (c *Checker) DropOperatorMark(mapName, dev string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := [2]string{mapName, dev}
	had := c.mu.operator[k]
	delete(c.mu.operator, k)
	return had
}

// ForgetOperatorMarks drops every mark of the map named mapName (its
// device was removed: a new device of that name starts without them).
func (c *Checker) ForgetOperatorMarks(mapName string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.mu.operator {
		if k[0] == mapName {
			delete(c.mu.operator, k)
		}
	}
}

// Resolve finds the paths dev names in the live map mapName (every live
// map, if mapName is empty), as FailPath would: by map name, the paths'
// names as their tables give them.
func (c *Checker) Resolve(mapName, dev string) map[string][]string {
	out := map[string][]string{}
	for _, e := range c.entries() {
		name := e.t.Name()
		if mapName != "" && name != mapName {
			continue
		}
		for _, i := range e.t.resolve(dev) {
			out[name] = append(out[name], e.t.paths[i].name)
		}
	}
	return out
}

// MarkedAs finds the operator's marks of the path dev (by its name as
// the table gave it) in the map mapName (every map, if empty), whether
// or not a live table names it, by map name.
func (c *Checker) MarkedAs(mapName, dev string) map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for k := range c.mu.operator {
		if (mapName == "" || k[0] == mapName) && k[1] == dev {
			out[k[0]] = append(out[k[0]], k[1])
		}
	}
	return out
}
