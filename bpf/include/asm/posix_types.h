/* Architecture-neutral stand-in: the BPF target has no asm/ directory of its own,
 * and these UAPI definitions are the same on every 64-bit Linux target. */
#include <asm-generic/posix_types.h>
