package dm

import "github.com/rs/zerolog"

// MapResult is what a target's Map did with a clone.
type MapResult uint8

const (
	// MapRemapped: the target set c.Dev (and c.Sector); the core submits.
	MapRemapped MapResult = iota
	// MapSubmitted: the target took the clone (queued it, or submitted it
	// itself) and will end it.
	MapSubmitted
	// MapRequeue: push the bio back (pushback during a noflush suspend,
	// EIO otherwise).
	MapRequeue
	// MapKill: end the clone with EIO.
	MapKill
)

// EndIOResult is what a target's EndIO decided about a finished clone.
type EndIOResult uint8

const (
	// EndIODone: the clone is finished with the (possibly changed) error.
	EndIODone EndIOResult = iota
	// EndIORequeue: push the bio back, as MapRequeue.
	EndIORequeue
	// EndIOIncomplete: the target took the clone back (to retry it on
	// another path, or to hold it) and will end it again later.
	EndIOIncomplete
)

// StatusType selects the form of Status: INFO (dmsetup status) or TABLE
// (dmsetup table, which must load back).
type StatusType uint8

const (
	StatusInfo StatusType = iota
	StatusTable
)

// Target is one constructed table entry. Map and EndIO run on the fast
// path, concurrently from several loops; the optional hooks run on the
// slow path, serialized by the device.
type Target interface {
	// Map routes a clone (see MapResult). Must not block.
	Map(c *Clone) MapResult
	// Status returns the target's parameters in the kernel's format
	// (without "<start> <len> <type>").
	Status(t StatusType) string
}

// Optional target hooks, found by type assertion.
type (
	// EndIOer sees each clone's completion before the core does.
	EndIOer interface {
		EndIO(c *Clone, err error) (EndIOResult, error)
	}
	// PreSuspender runs first in a suspend (NoflushSuspending tells which
	// kind).
	PreSuspender interface{ PreSuspend() }
	// PreSuspendUndoer undoes PreSuspend when the suspend is cancelled.
	PreSuspendUndoer interface{ PreSuspendUndo() }
	// PostSuspender runs once I/O has drained.
	PostSuspender interface{ PostSuspend() }
	// PreResumer may refuse a resume; an error leaves the device suspended.
	PreResumer interface{ PreResume() error }
	// Resumer runs after all preresumes succeeded.
	Resumer interface{ Resume() }
	// Messager takes `dmsetup message` arguments; the reply may be empty.
	Messager interface {
		Message(args []string) (string, error)
	}
	// IOLimiter bounds the sectors one clone may span; clones are split at
	// multiples of it counted from the target's start (stripe chunks).
	IOLimiter interface{ MaxIOSectors() uint64 }
	// CloneCounter says how many clones an empty flush or a discard sends
	// to the target (default 1 each; 0 means the target doesn't take it).
	CloneCounter interface {
		NumFlushClones() int
		NumDiscardClones() int
	}
	// Destroyer releases what the target holds when its table is
	// destroyed. Devices from TargetContext.GetDevice are released by the
	// table itself.
	Destroyer interface{ Destroy() }
)

// TargetType constructs targets of one kind from table arguments.
type TargetType struct {
	Name    string
	Version [3]int
	// Singleton targets must be alone in their table (multipath).
	Singleton bool
	// Immutable targets' tables can't be replaced by a table of another
	// type.
	Immutable bool
	New       func(ctx *TargetContext, args []string) (Target, error)
}

// TargetContext is what a constructor gets: where the target sits, how to
// open devices (released with the table), and hooks back into the device.
type TargetContext struct {
	Begin, Len uint64 // sectors
	Log        zerolog.Logger
	// Devices opens the devices the table names.
	Devices DeviceGetter
	// Device is the owner (nil in unit tests of a bare target).
	Device *Device
}

// DeviceGetter opens the backing devices a table names; the table releases
// them when it is destroyed.
type DeviceGetter interface {
	GetDevice(name string, readOnly bool) (BlockDevice, error)
}
