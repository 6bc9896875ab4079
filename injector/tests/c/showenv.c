/* Prints what it sees of each variable named on its command line, through both getenv and
 * environ: a value set behind libc's back would show in one and not the other.
 * With --exec-self first, it first re-executes itself without that flag, so the second
 * process inherits whatever the first one's environment became.
 * Built with -DEXPORT=<name> -rdynamic it exports a function of that name, as the runtimes the
 * injector serves export their C APIs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#ifdef EXPORT
void EXPORT(void) {}
#endif

static const char *from_environ(const char *name) {
    size_t n = strlen(name);
    for (char **p = environ; *p; p++)
        if (strncmp(*p, name, n) == 0 && (*p)[n] == '=')
            return *p + n + 1;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exec-self") == 0) {
        argv[1] = argv[0];
        execv("/proc/self/exe", argv + 1);
        perror("execv");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *g = getenv(argv[i]), *e = from_environ(argv[i]);
        printf("getenv %s=%s\n", argv[i], g ? g : "<unset>");
        printf("environ %s=%s\n", argv[i], e ? e : "<unset>");
    }
    return 0;
}
