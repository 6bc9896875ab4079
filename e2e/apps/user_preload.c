/* A container's own LD_PRELOAD library, as some images ship one (an allocator, a shim): it marks
 * the environment at load time, so the test can see it still runs beside the injector. */
#include <stdlib.h>

__attribute__((constructor)) static void mark(void) { setenv("USER_PRELOAD_RAN", "yes", 1); }
