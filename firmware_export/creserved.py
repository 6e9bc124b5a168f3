"""C99 reserved words and common macro names a generated identifier must not take."""

C_RESERVED = frozenset(
    """
auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef
union unsigned void volatile while _Bool _Complex _Imaginary
bool true false NULL EOF assert errno main
int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t
""".split()
)
