package dm

import "fmt"

// errorTarget fails every I/O: `error`. It accepts (and ignores) any
// arguments, as the kernel's does.
type errorTarget struct{}

func errorType() TargetType {
	return TargetType{Name: "error", Version: [3]int{1, 7, 0}, New: func(*TargetContext, []string) (Target, error) {
		return errorTarget{}, nil
	}}
}

func (errorTarget) Map(*Clone) MapResult     { return MapKill }
func (errorTarget) Status(StatusType) string { return "" }

// zeroTarget reads zeroes and drops writes: `zero`.
type zeroTarget struct{}

func zeroType() TargetType {
	return TargetType{Name: "zero", Version: [3]int{1, 2, 0}, New: func(_ *TargetContext, args []string) (Target, error) {
		if len(args) != 0 {
			return nil, fmt.Errorf("no arguments required")
		}
		return zeroTarget{}, nil
	}}
}

func (zeroTarget) Map(c *Clone) MapResult {
	if c.Op == OpRead {
		clear(c.Buf)
	}
	c.Finish(nil)
	return MapSubmitted
}

func (zeroTarget) Status(StatusType) string { return "" }
