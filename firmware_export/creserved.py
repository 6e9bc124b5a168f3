"""Names a generated model must not take: C keywords, common library identifiers, header names."""

# Keywords of C89..C23 (C23 adds the lower-case spellings and a few new ones), and identifiers
# every C program already uses; NAME is only ever a prefix (NAME_step), but a keyword as a file
# name or prefix is a trap for the next person to read the code.
C_RESERVED = frozenset(
    """
auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef
union unsigned void volatile while _Bool _Complex _Imaginary
_Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local
alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual
_BitInt _Decimal32 _Decimal64 _Decimal128
NULL EOF assert errno main
int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t
""".split()
)

# Standard headers of C89..C23 (and the freestanding set): NAME.h next to them would shadow
# <NAME.h> for any file compiled with -I on the output folder. Compared case-insensitively,
# because Windows and macOS file systems are.
C_HEADERS = frozenset(
    """
assert complex ctype errno fenv float inttypes iso646 limits locale math setjmp signal
stdalign stdarg stdatomic stdbit stdbool stdckdint stddef stdint stdio stdlib stdnoreturn
string tgmath threads time uchar wchar wctype
""".split()
)

# File names Windows refuses (a generated folder is often copied into a Windows IDE).
WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)
