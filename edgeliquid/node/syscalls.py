"""The system calls of the node's hot path, callable from compiled (numba) code.

``ppoll``, ``read``, ``write``, ``clock_gettime`` and ``clock_nanosleep`` (CLOCK_MONOTONIC) are
declared as external C functions in the generated code and bound by name to the process's libc
when the code is loaded,
so the functions that use them stay cacheable (a ctypes function pointer would be a constant
address, and numba refuses to cache it). With them the node waits, reads, steps and writes in
one compiled call: nothing of the interpreter runs between "frame readable" and "command
written" (see :func:`.framecodec.ltc_frame_io`).

Linux on a 64-bit CPU only (``struct timespec`` as two 64-bit words, ``struct pollfd`` as
int32 + 2 × int16): :data:`AVAILABLE` says whether this process can use them; elsewhere the node
keeps its Python ``select`` / ``os.readv`` / ``os.write`` path.
"""

from __future__ import annotations

import ctypes
import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Whether the compiled system calls match this platform's C structures.
_LP64 = ctypes.sizeof(ctypes.c_long) == ctypes.sizeof(ctypes.c_void_p) == 8
AVAILABLE = sys.platform.startswith("linux") and _LP64

_CLOCK_MONOTONIC = 1
_TIMER_ABSTIME = 1
_POLLIN = 0x001

_i16, _i32, _i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_ptr = ir.IntType(8).as_pointer()


def _extern(builder, name: str, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _timespec(builder, ns):
    """A stack ``struct timespec`` holding ``ns`` nanoseconds."""
    ts = cgutils.alloca_once(builder, ir.ArrayType(_i64, 2))
    billion = ir.Constant(_i64, 1_000_000_000)
    builder.store(builder.sdiv(ns, billion), builder.gep(ts, [_i32(0), _i32(0)]))
    builder.store(builder.srem(ns, billion), builder.gep(ts, [_i32(0), _i32(1)]))
    return ts


@intrinsic
def monotonic_ns(typingctx):
    """``time.monotonic_ns()`` (clock_gettime(CLOCK_MONOTONIC)) as int64."""

    def codegen(context, builder, sig, args):
        ts = cgutils.alloca_once(builder, ir.ArrayType(_i64, 2))
        fn = _extern(builder, "clock_gettime", _i32, [_i32, _ptr])
        builder.call(fn, [_i32(_CLOCK_MONOTONIC), builder.bitcast(ts, _ptr)])
        sec = builder.load(builder.gep(ts, [_i32(0), _i32(0)]))
        nsec = builder.load(builder.gep(ts, [_i32(0), _i32(1)]))
        return builder.add(builder.mul(sec, _i64(1_000_000_000)), nsec)

    return types.int64(), codegen


@intrinsic
def poll_in(typingctx, fd, timeout_ns):
    """Wait until ``fd`` is readable or ``timeout_ns`` passed (ppoll, POLLIN): ppoll's result
    (1 ready or hung up, 0 timed out, -1 failed, e.g. interrupted by a signal)."""

    def codegen(context, builder, sig, args):
        fdv = context.cast(builder, args[0], sig.args[0], types.int32)
        ns = context.cast(builder, args[1], sig.args[1], types.int64)
        pfd = cgutils.alloca_once(builder, ir.LiteralStructType([_i32, _i16, _i16]))
        builder.store(fdv, builder.gep(pfd, [_i32(0), _i32(0)]))
        builder.store(_i16(_POLLIN), builder.gep(pfd, [_i32(0), _i32(1)]))
        builder.store(_i16(0), builder.gep(pfd, [_i32(0), _i32(2)]))
        ts = _timespec(builder, ns)
        fn = _extern(builder, "ppoll", _i32, [_ptr, _i64, _ptr, _ptr])
        r = builder.call(
            fn, [builder.bitcast(pfd, _ptr), _i64(1), builder.bitcast(ts, _ptr), ir.Constant(_ptr, None)]
        )
        return builder.sext(r, _i64)

    return types.int64(fd, timeout_ns), codegen


def _io(name: str):
    def template(typingctx, fd, buf, offset, count):
        """``name(fd, &buf[offset], count)`` on a uint8 array; bytes moved, or -1."""
        if not (isinstance(buf, types.Array) and buf.dtype == types.uint8):
            return None

        def codegen(context, builder, sig, args):
            fdv = context.cast(builder, args[0], sig.args[0], types.int32)
            ary = context.make_array(sig.args[1])(context, builder, args[1])
            off = context.cast(builder, args[2], sig.args[2], types.int64)
            cnt = context.cast(builder, args[3], sig.args[3], types.int64)
            ptr = builder.gep(builder.bitcast(ary.data, _ptr), [off])
            fn = _extern(builder, name, _i64, [_i32, _ptr, _i64])
            return builder.call(fn, [fdv, ptr, cnt])

        return types.int64(fd, buf, offset, count), codegen

    template.__name__ = f"sys_{name}"
    return intrinsic(template)


#: ``read(fd, &buf[offset], count)``: bytes read, 0 at end of file, -1 on error (e.g. EAGAIN).
sys_read = _io("read")
#: ``write(fd, &buf[offset], count)``: bytes written, or -1 on error.
sys_write = _io("write")


@intrinsic
def sleep_until(typingctx, t_ns):
    """``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` until ``t_ns`` (monotonic_ns): 0, or
    the error number (EINTR: a signal woke it early; the caller looks at the clock)."""

    def codegen(context, builder, sig, args):
        ts = _timespec(builder, context.cast(builder, args[0], sig.args[0], types.int64))
        fn = _extern(builder, "clock_nanosleep", _i32, [_i32, _i32, _ptr, _ptr])
        null = ir.Constant(_ptr, None)
        r = builder.call(fn, [_i32(_CLOCK_MONOTONIC), _i32(_TIMER_ABSTIME), builder.bitcast(ts, _ptr), null])
        return builder.sext(r, _i64)

    return types.int64(t_ns), codegen
