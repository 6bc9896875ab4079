/* Start-up cost of a preloaded object: runs one command many times under four environments,
 * interleaved so that drift in machine load hits all of them alike:
 *   none    no LD_PRELOAD
 *   empty   LD_PRELOAD of an empty shared object (what the dynamic loader charges any preload)
 *   inj     LD_PRELOAD of lumigo_injector.so
 *   manual  no LD_PRELOAD, but the variable the injector would set already set by hand
 *           (for a served runtime: the runtime's own cost of what the variable asks for)
 * and prints the median wall time of each and their differences, in microseconds.
 *   usage: spawnbench RUNS INJECTOR_SO EMPTY_SO NAME=VALUE|- COMMAND [ARGS...] */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

enum { NONE, EMPTY, INJ, MANUAL, CONFIGS };

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* This process's environment without LD_PRELOAD, plus `extra` (a NAME=VALUE) if given. */
static char **environment(const char *extra) {
    size_t n = 0;
    while (environ[n]) n++;
    char **env = calloc(n + 2, sizeof *env), **out = env;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0) *out++ = environ[i];
    if (extra) *out = (char *)extra;
    return env;
}

static char *preload(const char *so) {
    size_t len = strlen(so) + 12;
    char *s = malloc(len);
    snprintf(s, len, "LD_PRELOAD=%s", so);
    return s;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: spawnbench RUNS INJECTOR_SO EMPTY_SO NAME=VALUE|- COMMAND [ARGS...]\n");
        return 2;
    }
    int runs = atoi(argv[1]);
    int configs = strcmp(argv[4], "-") == 0 ? MANUAL : CONFIGS;
    const char *names[CONFIGS] = {"none", "empty", "inj", "manual"};
    char **envs[CONFIGS] = {environment(NULL), environment(preload(argv[3])), environment(preload(argv[2])),
                            environment(argv[4])};
    double *samples[CONFIGS];
    for (int k = 0; k < CONFIGS; k++) samples[k] = calloc(runs, sizeof(double));
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", 1, 0);
    for (int i = 0; i < runs; i++) {
        for (int j = 0; j < configs; j++) {
            int k = (i + j) % configs;
            struct timespec t0, t1;
            pid_t pid;
            int status;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (posix_spawnp(&pid, argv[5], &quiet, NULL, argv + 5, envs[k]) != 0) {
                perror("posix_spawnp");
                return 1;
            }
            waitpid(pid, &status, 0);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "%s failed under %s\n", argv[5], names[k]);
                return 1;
            }
            samples[k][i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
        }
    }
    double median[CONFIGS];
    for (int k = 0; k < configs; k++) {
        qsort(samples[k], runs, sizeof(double), by_value);
        median[k] = samples[k][runs / 2];
    }
    printf("%-22.22s %5d runs | median us: none %8.1f empty %8.1f inj %8.1f", argv[5], runs, median[NONE],
           median[EMPTY], median[INJ]);
    if (configs == CONFIGS) printf(" manual %8.1f", median[MANUAL]);
    printf(" | inj-none %+7.1f us (x%.3f)  inj-empty %+6.1f us", median[INJ] - median[NONE],
           median[INJ] / median[NONE], median[INJ] - median[EMPTY]);
    if (configs == CONFIGS) printf("  inj-manual %+7.1f us", median[INJ] - median[MANUAL]);
    printf("\n");
    return 0;
}
