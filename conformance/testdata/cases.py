"""Conformance cases run against one NBD server with libnbd.

usage: python3 -I cases.py CONFIG CASE strict|loose

CONFIG is JSON: {"disk": [host, port], "ro": [host, port], "size": N,
"rosize": N}; "disk" serves the read-write export "disk", "ro" the
read-only export "ro" (whose content is ro_pattern). The case prints one
JSON object: its outcome. Keys starting with "_" are reported but not
compared (details the protocol leaves to the server). A case that can't
run prints {"crash": "..."}.

Regions of "disk" each case owns (cases run in order, on one server, so
none may touch another's region):

    0..64K          unaligned cases
    1M..8M          commands (read/write, trim, zero, cache, fast zero)
    8M..12M         in flight, shutdown, multi-conn
    12M..14M        block status (12M..13M data, 13M..14M never written)
    16M..64M        48 MiB write
    64M..128M       64 MiB read and write
"""

import array
import errno
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import nbd

MiB = 1 << 20
cfg = json.loads(sys.argv[1])
CASE = sys.argv[2]
STRICT = sys.argv[3] == "strict"
SIZE = cfg["size"]
ROSIZE = cfg["rosize"]


def pattern(off, n, seed=0):
    """Deterministic bytes for [off, off+n): each 8-byte big-endian word
    names its offset, with the seed in its top byte."""
    start = off - off % 8
    end = off + n + 7 - (off + n + 7) % 8
    a = array.array("Q", range(start | seed << 56, end | seed << 56, 8))
    if sys.byteorder == "little":
        a.byteswap()
    return a.tobytes()[off - start:off - start + n]


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()[:16]


def ename(e):
    if e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "error"


def void(fn):
    """fn, its result dropped."""
    return lambda: (fn(), None)[1]


def attempt(fn):
    """Runs fn; its result, or the errno name of the libnbd error."""
    try:
        r = fn()
        return "ok" if r is None else r
    except nbd.Error as e:
        return ename(e)


def handle(export="disk", block_size=True, structured=True, meta=(), opt=False, name=None, connect=True):
    h = nbd.NBD()
    if not STRICT:
        h.set_strict_mode(0)
    h.set_request_block_size(block_size)
    h.set_request_structured_replies(structured)
    for m in meta:
        h.add_meta_context(m)
    if opt:
        h.set_opt_mode(True)
    h.set_export_name(export if name is None else name)
    if connect:
        host, port = cfg[export]
        h.connect_tcp(host, str(port))
    return h


def alive(h):
    """Whether the handle still serves a read."""
    try:
        h.pread(512, 0)
        return True
    except nbd.Error:
        return False


def wait_all(h, cookies):
    """Waits for the commands; {cookie: "ok" or errno name}."""
    out = {}
    while len(out) < len(cookies):
        for c in cookies:
            if c in out:
                continue
            try:
                if h.aio_command_completed(c):
                    out[c] = "ok"
            except nbd.Error as e:
                out[c] = ename(e)
        if len(out) < len(cookies):
            if h.aio_is_dead() or h.aio_is_closed():
                for c in cookies:
                    out.setdefault(c, "dead")
                break
            h.poll(-1)
    return out


# --- raw protocol, for what libnbd won't send ---------------------------

IHAVEOPT = 0x49484156454F5054
NBDMAGIC = 0x4E42444D41474943
REQ_MAGIC = 0x25609513
OPT_INFO, OPT_GO, OPT_LIST = 6, 7, 3
REP_ACK, REP_INFO = 1, 3
REP_NAMES = {1: "ACK", 2: "SERVER", 3: "INFO", 4: "META_CONTEXT",
             0x80000001: "ERR_UNSUP", 0x80000002: "ERR_POLICY", 0x80000003: "ERR_INVALID",
             0x80000004: "ERR_PLATFORM", 0x80000005: "ERR_TLS_REQD", 0x80000006: "ERR_UNKNOWN",
             0x80000007: "ERR_SHUTDOWN", 0x80000008: "ERR_BLOCK_SIZE_REQD", 0x80000009: "ERR_TOO_BIG"}
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2


class Raw:
    def __init__(self, export="disk", timeout=60):
        host, port = cfg[export]
        self.s = socket.create_connection((host, port), timeout=timeout)
        g = self.recv(18)
        magic, opt, _ = struct.unpack(">QQH", g)
        assert magic == NBDMAGIC and opt == IHAVEOPT, "not fixed newstyle"
        self.s.sendall(struct.pack(">I", 1))  # FIXED_NEWSTYLE, zeroes sent
        self.size = 0

    def recv(self, n):
        b = bytearray()
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("closed after %d of %d bytes" % (len(b), n))
            b += c
        return bytes(b)

    def opt(self, opt, data):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self):
        magic, opt, typ, n = struct.unpack(">QIII", self.recv(20))
        return REP_NAMES.get(typ, hex(typ)), self.recv(n)

    def replies(self):
        """Option replies up to the final one: [types], last data."""
        types = []
        while True:
            t, d = self.reply()
            types.append(t)
            if t == "INFO" and struct.unpack(">H", d[:2])[0] == 0:
                self.size = struct.unpack(">Q", d[2:10])[0]
            if t not in ("INFO", "SERVER", "META_CONTEXT"):
                return types, d

    def go(self, name):
        n = name.encode()
        self.opt(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        types, _ = self.replies()
        assert types[-1] == "ACK", "GO: %s" % types

    def request(self, typ, cookie, off, length, flags=0, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, length) + payload)

    def simple(self, lengths):
        """One simple reply; lengths maps cookies of reads to their length."""
        magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == 0x67446698, "reply magic %#x" % magic
        data = b""
        if err == 0 and cookie in lengths:
            data = self.recv(lengths[cookie])
        return cookie, err, data


# --- cases ---------------------------------------------------------------

def case_list():
    h = handle(opt=True, name="")
    names = []
    h.opt_list(lambda name, desc: names.append(name))
    h.opt_abort()
    return {"lists_disk": "disk" in names}


def case_info_missing():
    h = handle(opt=True, name="no-such-export")
    r = attempt(h.opt_info)
    h.set_export_name("disk")
    r2 = attempt(h.opt_info)
    # nbd-server 3.24 reports size 0 in its NBD_OPT_INFO reply.
    info_size = h.get_size()
    r3 = attempt(h.opt_go)
    return {"info_missing": r, "info_disk": r2, "_info_size": info_size, "go": r3, "size": h.get_size(),
            "alive": alive(h)}


def case_go_missing():
    h = handle(opt=True, name="no-such-export")
    r = attempt(h.opt_go)
    return {"go_missing": r, "still_negotiating": bool(h.aio_is_negotiating())}


def case_odd_names():
    h = handle(opt=True, name="")
    out = {}
    for name in ["a b", " disk", "disk ", "DISK", "d\u00fcsk-\u00e9", "disk/../disk", "x" * 300, "%s%n", "\t\n"]:
        h.set_export_name(name)
        out[repr(name)[:40]] = attempt(h.opt_info)
    h.set_export_name("disk")
    out["then_go"] = attempt(h.opt_go)
    out["alive"] = alive(h)
    return out


def case_long_name():
    h = handle(opt=True, name="n" * 4096)
    r = attempt(h.opt_info)
    h.set_export_name("disk")
    return {"info_4096": r, "then_go": attempt(h.opt_go), "alive": alive(h)}


def case_long_name_raw():
    r = Raw(timeout=10)
    name = b"n" * 5000
    r.opt(OPT_INFO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    t, d = r.reply()
    r.go("disk")
    return {"info_5000": t, "_msg_len": len(d), "then_go": "ok"}


def case_option_1mib():
    r = Raw()
    r.opt(0x7FF0, b"\0" * MiB)
    try:
        t, d = r.reply()
    except (EOFError, OSError) as e:
        return {"answered": False, "_err": str(e)}
    r.go("disk")
    return {"answered": t.startswith("ERR"), "_reply": t, "then_go": "ok"}


def case_meta_list():
    h = handle(opt=True, meta=["base:"])
    got = []
    r = attempt(lambda: h.opt_list_meta_context(lambda name: got.append(name)))
    h.opt_abort()
    return {"list": r, "contexts": sorted(got)}


def case_meta_set():
    h = handle(meta=[nbd.CONTEXT_BASE_ALLOCATION, "x-udm-conformance:nope"])
    return {"base": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
            "unknown": h.can_meta_context("x-udm-conformance:nope"), "alive": alive(h)}


def case_no_structured():
    h = handle(structured=False, meta=[nbd.CONTEXT_BASE_ALLOCATION])
    return {"structured": h.get_structured_replies_negotiated(), "base": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
            "df": h.can_df(), "read": attempt(lambda: sha(h.pread(4096, 0)) and None)}


def case_flags_rw():
    h = handle()
    return {"size": h.get_size(), "ro": h.is_read_only(), "flush": h.can_flush(), "fua": h.can_fua(),
            "trim": h.can_trim(), "zero": h.can_zero(), "multi_conn": h.can_multi_conn(),
            "_cache": h.can_cache(), "_df": h.can_df(), "_fast_zero": h.can_fast_zero(),
            "_min": h.get_block_size(nbd.SIZE_MINIMUM), "_pref": h.get_block_size(nbd.SIZE_PREFERRED),
            "_max": h.get_block_size(nbd.SIZE_MAXIMUM)}


def case_flags_ro():
    h = handle("ro")
    return {"size": h.get_size(), "ro": h.is_read_only(), "trim": h.can_trim(), "zero": h.can_zero(),
            "_fast_zero": h.can_fast_zero(), "_flush": h.can_flush()}


def case_read_write():
    h = handle()
    data = pattern(MiB, 64 << 10, 1)
    w = attempt(lambda: h.pwrite(data, MiB))
    return {"write": w, "read": sha(h.pread(64 << 10, MiB)) == sha(data)}


def case_write_fua():
    h = handle()
    data = pattern(MiB + (64 << 10), 64 << 10, 2)
    w = attempt(lambda: h.pwrite(data, MiB + (64 << 10), nbd.CMD_FLAG_FUA))
    return {"write": w, "read": h.pread(64 << 10, MiB + (64 << 10)) == data}


def case_flush():
    h = handle()
    return {"flush": attempt(h.flush), "alive": alive(h)}


def case_trim():
    h = handle()
    h.pwrite(pattern(2 * MiB, MiB, 3), 2 * MiB)
    t = attempt(lambda: h.trim(MiB // 2, 2 * MiB))
    t2 = attempt(lambda: h.trim(MiB // 2, 2 * MiB + MiB // 2, nbd.CMD_FLAG_FUA))
    # What a trimmed range reads as is the server's choice.
    return {"trim": t, "trim_fua": t2, "_zeroed": h.pread(MiB, 2 * MiB) == bytes(MiB), "alive": alive(h)}


def case_zero():
    h = handle()
    out = {}
    for i, (name, fl) in enumerate([("plain", 0), ("no_hole", nbd.CMD_FLAG_NO_HOLE), ("fua", nbd.CMD_FLAG_FUA),
                                    ("no_hole_fua", nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)]):
        off = 3 * MiB + i * 256 * 1024
        h.pwrite(pattern(off, 256 << 10, 4), off)
        out[name] = attempt(lambda: h.zero(256 << 10, off, fl))
        out[name + "_reads_zero"] = h.pread(256 << 10, off) == bytes(256 << 10)
    return out


def case_fast_zero():
    h = handle()
    if not h.can_fast_zero():
        # A client must not send FAST_ZERO unless it is offered (nbdkit
        # 1.32 aborts on one).
        return {"answered": True, "consistent": True, "alive": True, "_offered": False}
    off = 4 * MiB
    h.pwrite(pattern(off, MiB, 5), off)
    r = attempt(lambda: h.zero(MiB, off, nbd.CMD_FLAG_FAST_ZERO))
    # A server may decline a fast zero with ENOTSUP (then nothing changed).
    ok = r in ("ok", "ENOTSUP")
    data = h.pread(MiB, off)
    consistent = data == bytes(MiB) if r == "ok" else data == pattern(off, MiB, 5)
    return {"answered": ok, "_fast_zero": r, "consistent": consistent, "alive": alive(h)}


def case_cache():
    h = handle()
    return {"can": h.can_cache(), "cache": attempt(lambda: h.cache(MiB, 5 * MiB)), "alive": alive(h)}


def case_df_read():
    h = handle()
    h.pwrite(pattern(6 * MiB, MiB, 6), 6 * MiB)
    r = attempt(lambda: h.pread(MiB, 6 * MiB, nbd.CMD_FLAG_DF) == pattern(6 * MiB, MiB, 6) or "mismatch")
    return {"can": h.can_df(), "read_df": r}


def block_status(h, length, off, flags=0):
    ext = []

    def cb(ctx, offset, entries, err):
        if ctx == nbd.CONTEXT_BASE_ALLOCATION:
            ext.extend(zip(entries[0::2], entries[1::2]))
        return 0

    r = attempt(lambda: h.block_status(length, off, cb, flags))
    return r, ext


def case_block_status():
    h = handle(meta=[nbd.CONTEXT_BASE_ALLOCATION])
    h.pwrite(pattern(12 * MiB, MiB, 7), 12 * MiB)
    h.flush()
    r, ext = block_status(h, 2 * MiB, 12 * MiB)
    # The first extent is data; the region ends in a hole. Extent
    # boundaries and whether more extents follow are the server's choice.
    covered = sum(l for l, _ in ext)
    return {"status": r, "first_is_data": bool(ext) and ext[0][1] & nbd.STATE_HOLE == 0,
            "last_is_hole_zero": bool(ext) and ext[-1][1] == nbd.STATE_HOLE | nbd.STATE_ZERO,
            "within_bounds": covered <= 2 * MiB + 0, "_extents": ext[:8]}


def case_block_status_req_one():
    h = handle(meta=[nbd.CONTEXT_BASE_ALLOCATION])
    r, ext = block_status(h, 2 * MiB, 12 * MiB, nbd.CMD_FLAG_REQ_ONE)
    r2, ext2 = block_status(h, MiB, 13 * MiB, nbd.CMD_FLAG_REQ_ONE)
    return {"status": r, "extents": len(ext), "data": bool(ext) and ext[0][1] & nbd.STATE_HOLE == 0,
            "status_hole": r2, "hole": ext2[:1] == [(MiB, 3)] if ext2 and ext2[0][0] <= MiB else ext2[:1],
            "_extents": ext + ext2}


def case_block_status_past_end():
    h = handle(meta=[nbd.CONTEXT_BASE_ALLOCATION])
    r, _ = block_status(h, 2 * MiB, SIZE - MiB)
    return {"status": r, "alive": alive(h)}


def unaligned_handle():
    return handle(block_size=False)


def case_unaligned_write():
    h = unaligned_handle()
    h.pwrite(bytes(4096), 0)
    w = attempt(lambda: h.pwrite(b"abc", 1))
    r = attempt(lambda: h.pread(8, 0).hex())
    return {"write_3_at_1": w, "read_8_at_0": r, "alive": alive(h)}


def case_unaligned_trim():
    h = unaligned_handle()
    h.pwrite(pattern(8192, 8192, 8), 8192)
    t = attempt(lambda: h.trim(4096, 8192 + 1))
    # Bytes outside the trimmed range keep their data; inside, it's the
    # server's choice.
    b = h.pread(8192, 8192)
    return {"trim_at_1": t, "outside_kept": b[:1] == pattern(8192, 1, 8) and b[4097:] == pattern(8192 + 4097, 8192 - 4097, 8),
            "alive": alive(h)}


def case_unaligned_zero():
    h = unaligned_handle()
    h.pwrite(pattern(16384, 8192, 9), 16384)
    z = attempt(lambda: h.zero(100, 16384 + 7))
    b = h.pread(8192, 16384)
    return {"zero_100_at_7": z, "data": sha(b), "alive": alive(h)}


def case_unaligned_read():
    # On the read-only export, whose content is known.
    h = handle("ro", block_size=False)
    r = attempt(lambda: h.pread(1048590, 1) == ro_pattern(1, 1048590))
    r2 = attempt(lambda: h.pread(3, ROSIZE - 3) == ro_pattern(ROSIZE - 3, 3))
    r3 = attempt(lambda: h.pread(700, 4095) == ro_pattern(4095, 700))
    return {"read_1048590_at_1": r, "read_last_3": r2, "read_700_at_4095": r3, "alive": alive(h)}


def case_unaligned_concurrent():
    """Disjoint unaligned writes into the same sectors, all in flight:
    none may be lost to another's read-modify-write."""
    h = unaligned_handle()
    base = 32768
    h.pwrite(bytes(8192), base)
    cookies = []
    bufs = []
    for i in range(100):
        b = nbd.Buffer.from_bytearray(bytearray(pattern(base + 1 + 37 * i, 37, 11)))
        bufs.append(b)
        cookies.append(h.aio_pwrite(b, base + 1 + 37 * i))
    res = wait_all(h, cookies)
    got = h.pread(8192, base)
    want = b"\0" + pattern(base + 1, 3700, 11) + bytes(8192 - 3701)
    return {"writes": sorted(set(res.values())), "none_lost": got == want, "alive": alive(h)}


def case_unaligned_negotiated():
    # A client that asked for block sizes is held to what it got; a server
    # may serve or refuse (EINVAL) what falls outside them.
    h = handle()
    w = attempt(lambda: h.pwrite(b"xyz", 40961))
    return {"answered": w in ("ok", "EINVAL"), "_write": w, "alive": alive(h)}


def case_read_past_end():
    h = handle()
    return {"at_end": attempt(void(lambda: h.pread(512, SIZE))),
            "across_end": attempt(void(lambda: h.pread(1024, SIZE - 512))),
            "huge_offset": attempt(void(lambda: h.pread(512, (1 << 63) - 512))), "alive": alive(h)}


def case_write_past_end():
    h = handle()
    return {"at_end": attempt(lambda: h.pwrite(bytes(512), SIZE)),
            "across_end": attempt(lambda: h.pwrite(bytes(1024), SIZE - 512)), "alive": alive(h),
            "kept": h.pread(512, SIZE - 512) == bytes(512)}


def case_trim_past_end():
    h = handle()
    return {"at_end": attempt(lambda: h.trim(512, SIZE)), "across_end": attempt(lambda: h.trim(1024, SIZE - 512)),
            "alive": alive(h)}


def case_zero_past_end():
    h = handle()
    return {"at_end": attempt(lambda: h.zero(512, SIZE)), "across_end": attempt(lambda: h.zero(1024, SIZE - 512)),
            "alive": alive(h)}


def case_cache_past_end():
    h = handle()
    # CACHE is advisory; past the end it should be EINVAL.
    return {"across_end": attempt(lambda: h.cache(1024, SIZE - 512)), "alive": alive(h)}


def case_unknown_flag():
    h = handle()
    # Flags a command doesn't take: EINVAL, the connection goes on.
    return {"read_no_hole": attempt(void(lambda: h.pread(512, 0, nbd.CMD_FLAG_NO_HOLE))),
            "alive": alive(h)}


def case_zero_length():
    # Unspecified by the protocol, except that the server should not
    # disconnect: any answer will do.
    h = handle(meta=[nbd.CONTEXT_BASE_ALLOCATION])
    out = {}
    for name, fn in [("read", void(lambda: h.pread(0, 4096))), ("write", lambda: h.pwrite(b"", 4096)),
                     ("trim", lambda: h.trim(0, 4096)), ("zero", lambda: h.zero(0, 4096)),
                     ("cache", lambda: h.cache(0, 4096)), ("flush", lambda: h.flush())]:
        r = attempt(fn)
        out["_" + name] = r
        out[name + "_answered"] = r != "dead" and not h.aio_is_dead()
    out["alive"] = alive(h)
    return out


def case_ro_write_4m():
    h = handle("ro")
    r = attempt(lambda: h.pwrite(pattern(0, 4 * MiB, 12), 0))
    a = alive(h)
    r2 = attempt(lambda: h.pwrite(b"x" * 512, 512))
    return {"write_4m": r, "alive": a, "write_512": r2, "alive2": alive(h),
            "unchanged": sha(h.pread(4 * MiB, 0)) == sha(ro_pattern(0, 4 * MiB))}


def ro_pattern(off, n):
    return pattern(off, n, 0x52)


def case_ro_trim_zero():
    h = handle("ro")
    return {"trim": attempt(lambda: h.trim(MiB, 0)), "zero": attempt(lambda: h.zero(MiB, 0)),
            "alive": alive(h), "unchanged": h.pread(MiB, 0) == ro_pattern(0, MiB)}


def case_ro_read():
    h = handle("ro")
    return {"read": sha(h.pread(4 * MiB, 4 * MiB)) == sha(ro_pattern(4 * MiB, 4 * MiB))}


def big_round_trip(off, n, seed, label):
    """Writes n bytes of pattern at off in one request and reads them back
    in one."""
    h = handle()
    data = pattern(off, n, seed)
    w = attempt(lambda: h.pwrite(data, off))
    r = attempt(lambda: "match" if h.pread(n, off) == data else "mismatch")
    return {"write_" + label: w, "read_" + label: r, "alive": alive(h)}


def case_big_48m():
    return big_round_trip(16 * MiB, 48 * MiB, 13, "48m")


def case_big_64m():
    return big_round_trip(64 * MiB, 64 * MiB, 14, "64m")


def case_inflight_many():
    h = handle()
    base = 8 * MiB
    h.pwrite(pattern(base, 2 * MiB, 15), base)
    reqs = []
    # Sizes from 512 bytes to 1 MiB, so replies may come in any order.
    for i in range(96):
        n = 512 << (i % 12)
        off = base + (i * 7919 * 512) % (2 * MiB - n)
        off -= off % 512
        buf = nbd.Buffer(n)
        reqs.append((h.aio_pread(buf, off), buf, off, n))
    res = wait_all(h, [c for c, _, _, _ in reqs])
    bad = [i for i, (c, buf, off, n) in enumerate(reqs) if res[c] != "ok" or buf.to_bytearray() != pattern(off, n, 15)]
    return {"requests": len(reqs), "bad": bad}


def case_shutdown_inflight():
    h = handle()
    base = 8 * MiB
    cookies = []
    bufs = []
    for i in range(32):
        b = nbd.Buffer(MiB)
        bufs.append(b)
        cookies.append(h.aio_pread(b, base + (i % 2) * MiB))
    h.shutdown()
    done = 0
    for c in cookies:
        try:
            if h.aio_command_completed(c):
                done += 1
        except nbd.Error:
            pass
    return {"completed": done}


def raw_reads_then(end):
    """32 reads of 1 MiB in flight, then end(raw): every reply must come."""
    r = Raw()
    r.go("disk")
    lengths = {}
    for i in range(32):
        lengths[100 + i] = MiB
        r.request(CMD_READ, 100 + i, 8 * MiB + (i % 2) * MiB, MiB)
    end(r)
    got = 0
    errs = []
    try:
        while True:
            cookie, err, data = r.simple(lengths)
            if err:
                errs.append(err)
            got += 1
    except (EOFError, ConnectionResetError) as e:
        pass
    return {"replies": got, "errors": errs}


def case_halfclose():
    return raw_reads_then(lambda r: r.s.shutdown(socket.SHUT_WR))


def case_disc_raw():
    return raw_reads_then(lambda r: r.request(CMD_DISC, 999, 0, 0))


def case_refused_payload_raw():
    """A refused write's payload is read before its error reply; the next
    request is answered."""
    r = Raw("ro")
    r.go("ro")
    payload = bytes(4 * MiB)
    t = threading.Thread(target=lambda: (r.request(CMD_WRITE, 1, 0, len(payload), 0, payload),
                                         r.request(CMD_READ, 2, 0, 4096)))
    t.start()
    out = {}
    try:
        for _ in range(2):
            cookie, err, data = r.simple({2: 4096})
            out[str(cookie)] = err if cookie == 1 else (err, data == ro_pattern(0, 4096))
    except (EOFError, ConnectionResetError, AssertionError) as e:
        out["_closed"] = str(e)
    t.join()
    return out


def case_oversize_write_raw():
    """A write over 64 MiB (with its payload): the server may serve it or
    refuse it, but then it must read the payload and go on."""
    r = Raw()
    r.go("disk")
    n = 64 * MiB + 4096
    payload = bytes(n)
    t = threading.Thread(target=lambda: (r.request(CMD_WRITE, 1, 0, n, 0, payload), r.request(CMD_READ, 2, 0, 4096)))
    t.start()
    out = {}
    try:
        for _ in range(2):
            cookie, err, data = r.simple({2: 4096})
            out["_%d" % cookie] = err
            if cookie == 2:
                out["read_after"] = err
    except (EOFError, ConnectionResetError, AssertionError, socket.timeout) as e:
        out["_closed"] = str(e)
    t.join()
    out["write_answered"] = "_1" in out
    return out


def case_multi_conn():
    h1 = handle()
    h2 = handle()
    off = 10 * MiB
    h2.pread(MiB, off)  # warm anything h2 might cache
    data = pattern(off, MiB, 16)
    h1.pwrite(data, off)
    h1.flush()
    return {"multi_conn": h1.can_multi_conn(), "seen": h2.pread(MiB, off) == data}


def case_nbdcopy_ro():
    host, port = cfg["ro"]
    p = subprocess.run(["nbdcopy", "nbd://%s:%d/ro" % (host, port), "-"], capture_output=True, timeout=120)
    if p.returncode != 0:
        return {"nbdcopy": p.returncode, "_stderr": p.stderr.decode()[-300:]}
    return {"nbdcopy": 0, "match": sha(p.stdout) == sha(ro_pattern(0, ROSIZE))}


def case_nbdinfo_map_ro():
    host, port = cfg["ro"]
    p = subprocess.run(["nbdinfo", "--map", "--totals", "nbd://%s:%d/ro" % (host, port)], capture_output=True,
                       timeout=60)
    return {"rc": p.returncode, "totals": p.stdout.decode().split()}


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    if CASE == "--list":
        print(json.dumps(sorted(CASES)))
        sys.exit(0)
    try:
        out = CASES[CASE]()
    except Exception as e:  # a case that could not run at all
        out = {"crash": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out, sort_keys=True))
