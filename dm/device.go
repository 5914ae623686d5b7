package dm

// bioCore is the core's per-bio state (being written).
type bioCore struct{}

// cloneCore is the core's per-clone state (being written).
type cloneCore struct{}

// Device is a mapped device (being written).
type Device struct{}
