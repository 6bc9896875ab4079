/* A dynamically linked executable with no libc at all (like a Go PIE): a preloaded object
 * that imported any symbol would make the dynamic loader refuse to start it. */
static long sys3(long n, long a, long b, long c) {
    long ret;
#if defined(__x86_64__)
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n, x0 __asm__("x0") = a, x1 __asm__("x1") = b, x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    ret = x0;
#endif
    return ret;
}

#if defined(__x86_64__)
enum { SYS_write = 1, SYS_exit = 60 };
#elif defined(__aarch64__)
enum { SYS_write = 64, SYS_exit = 93 };
#endif

/* Node.js's addon API, so that the injector takes it for Node.js. */
void node_module_register(void) {}

void _start(void) {
    static const char msg[] = "nolibc ran\n";
    sys3(SYS_write, 1, (long)msg, sizeof msg - 1);
    sys3(SYS_exit, 0, 0, 0);
    for (;;) {}
}
