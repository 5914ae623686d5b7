// Package dm is udm's device-mapper core: bios, targets, tables, devices
// with suspend/resume and the noflush pushback list, and the registry of
// named devices.
package dm
