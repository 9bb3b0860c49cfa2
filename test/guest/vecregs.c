/*
 * vecregs: does the kernel keep a process's vector registers?
 *
 * Each worker loads known values into a set of vector registers, spins with
 * them live, stores them back and compares: a kernel that loses or mixes up
 * a task's FPU state on a context switch or a signal shows as a mismatch.
 * The disturbances, all at once:
 *   (a) a second thread doing the same with values of its own,
 *   (b) a forked process doing the same with values of its own,
 *   (c) a 1 ms SIGALRM whose handler overwrites those very registers.
 *
 * Usage: vecregs [avx512|avx|sse [seconds [min_signals]]]
 *   avx512: zmm0-31 (so ymm16-31 and zmm16-31 too), avx: ymm0-15,
 *   sse: xmm0-15; the default is the widest this CPU has.
 * Prints a summary, "vecregs: SET checks=N mismatches=M signals=S ..."
 * (M counts 64-bit lanes; the first mismatch is described on a line before
 * it), and exits 0 only when M is 0 and S >= min_signals (default 200).
 *
 * Build: gcc -static -O2 -pthread -o vecregs vecregs.c
 * Only the functions marked with a target attribute use AVX or AVX-512, and
 * they run only on a CPU that has it, so the binary runs on any x86-64.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGS_MAX 32
#define LANES 8 /* 64-bit lanes of a zmm */
#define SPIN 100000 /* loop turns with the registers live, per check */

typedef uint64_t regs_t[REGS_MAX][LANES] __attribute__((aligned(64)));

/* The register set: how many registers, how many lanes each. */
static const char *set_name;
static int nregs, nlanes;
static void (*run)(const regs_t in, regs_t out, long spin);

/* Counters shared with the forked child (MAP_SHARED). */
struct counters {
    long checks, mismatches, signals; /* mismatches: 64-bit lanes */
    int described;
    char first[256]; /* the first mismatch, described */
};
static struct counters *shared;

/*
 * run_*: load `in' into the registers, spin `spin' turns, store them to
 * `out'. One asm statement, so no compiler code runs while they are live.
 * The signal handler calls the same functions to overwrite them.
 */
#define L8(op, a, b, c, d, e, f, g, h) op(a) op(b) op(c) op(d) op(e) op(f) op(g) op(h)
#define SPIN_ASM "1: dec %2\n\t jnz 1b\n\t"

#define LD512(n) "vmovdqa64 " #n "*64(%0), %%zmm" #n "\n\t"
#define ST512(n) "vmovdqa64 %%zmm" #n ", " #n "*64(%1)\n\t"
__attribute__((target("avx512f"))) static void run_avx512(const regs_t in, regs_t out, long spin)
{
    __asm__ volatile(
        L8(LD512, 0, 1, 2, 3, 4, 5, 6, 7) L8(LD512, 8, 9, 10, 11, 12, 13, 14, 15)
        L8(LD512, 16, 17, 18, 19, 20, 21, 22, 23) L8(LD512, 24, 25, 26, 27, 28, 29, 30, 31)
        SPIN_ASM
        L8(ST512, 0, 1, 2, 3, 4, 5, 6, 7) L8(ST512, 8, 9, 10, 11, 12, 13, 14, 15)
        L8(ST512, 16, 17, 18, 19, 20, 21, 22, 23) L8(ST512, 24, 25, 26, 27, 28, 29, 30, 31)
        : "+r"(in), "+r"(out), "+r"(spin)
        :
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
          "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
          "xmm28", "xmm29", "xmm30", "xmm31");
}

/* Registers are 64 bytes apart in regs_t whatever their width. */
#define LD256(n) "vmovdqa " #n "*64(%0), %%ymm" #n "\n\t"
#define ST256(n) "vmovdqa %%ymm" #n ", " #n "*64(%1)\n\t"
__attribute__((target("avx"))) static void run_avx(const regs_t in, regs_t out, long spin)
{
    __asm__ volatile(
        L8(LD256, 0, 1, 2, 3, 4, 5, 6, 7) L8(LD256, 8, 9, 10, 11, 12, 13, 14, 15)
        SPIN_ASM
        L8(ST256, 0, 1, 2, 3, 4, 5, 6, 7) L8(ST256, 8, 9, 10, 11, 12, 13, 14, 15)
        : "+r"(in), "+r"(out), "+r"(spin)
        :
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#define LD128(n) "movdqa " #n "*64(%0), %%xmm" #n "\n\t"
#define ST128(n) "movdqa %%xmm" #n ", " #n "*64(%1)\n\t"
static void run_sse(const regs_t in, regs_t out, long spin)
{
    __asm__ volatile(
        L8(LD128, 0, 1, 2, 3, 4, 5, 6, 7) L8(LD128, 8, 9, 10, 11, 12, 13, 14, 15)
        SPIN_ASM
        L8(ST128, 0, 1, 2, 3, 4, 5, 6, 7) L8(ST128, 8, 9, 10, 11, 12, 13, 14, 15)
        : "+r"(in), "+r"(out), "+r"(spin)
        :
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* A value no other worker, register, lane or round has. */
static void fill(regs_t r, unsigned worker, unsigned long round)
{
    for (int i = 0; i < REGS_MAX; i++)
        for (int j = 0; j < LANES; j++)
            r[i][j] = ((uint64_t)worker << 56 | (uint64_t)i << 48 | (uint64_t)j << 40 | (round & 0xffffffffff)) *
                          0x9e3779b97f4a7c15ull | 1;
}

/* SIGALRM: clobber the registers the interrupted code holds live. */
static void on_alarm(int sig)
{
    static __thread regs_t junk, sink;
    static __thread unsigned long n;
    (void)sig;
    fill(junk, 0xff, ++n);
    run(junk, sink, 100);
    __atomic_fetch_add(&shared->signals, 1, __ATOMIC_RELAXED);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double seconds = 1.5;

/* Check until time is up; count checks and mismatched lanes. */
static void worker(unsigned id)
{
    static __thread regs_t in, out;
    double end = now() + seconds;
    unsigned long round = 0;
    do {
        for (int k = 0; k < 16; k++, round++) {
            fill(in, id, round);
            memset(out, 0, sizeof out);
            run(in, out, SPIN);
            long bad = 0;
            for (int i = 0; i < nregs; i++)
                for (int j = 0; j < nlanes; j++)
                    if (in[i][j] != out[i][j] && bad++ == 0 &&
                        !__atomic_exchange_n(&shared->described, 1, __ATOMIC_RELAXED))
                        snprintf(shared->first, sizeof shared->first,
                                 "worker %u: %s%d lane %d is %016llx, not %016llx", id,
                                 nlanes == 8 ? "zmm" : nlanes == 4 ? "ymm" : "xmm", i, j,
                                 (unsigned long long)out[i][j], (unsigned long long)in[i][j]);
            __atomic_fetch_add(&shared->mismatches, bad, __ATOMIC_RELAXED);
            __atomic_fetch_add(&shared->checks, 1, __ATOMIC_RELAXED);
        }
    } while (now() < end);
}

static void *thread_main(void *id)
{
    worker((unsigned)(uintptr_t)id);
    return NULL;
}

/* SIGALRM every millisecond, for this process. */
static void start_alarm(void)
{
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static void stop_alarm(void)
{
    struct itimerval it = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
}

int main(int argc, char **argv)
{
    const char *want = argc > 1 ? argv[1] : NULL;
    long min_signals = argc > 3 ? atol(argv[3]) : 200;
    if (argc > 2)
        seconds = atof(argv[2]);

    __builtin_cpu_init();
    /* __builtin_cpu_supports also asks XGETBV whether the OS enabled it. */
    int has512 = __builtin_cpu_supports("avx512f"), has256 = __builtin_cpu_supports("avx");
    if (!want)
        want = has512 ? "avx512" : has256 ? "avx" : "sse";
    if (!strcmp(want, "avx512") && has512)
        run = run_avx512, nregs = 32, nlanes = 8;
    else if (!strcmp(want, "avx") && has256)
        run = run_avx, nregs = 16, nlanes = 4;
    else if (!strcmp(want, "sse"))
        run = run_sse, nregs = 16, nlanes = 2;
    else {
        printf("vecregs: %s not available on this CPU (avx512f=%d avx=%d)\n", want, has512 != 0,
               has256 != 0);
        return 2;
    }
    set_name = want;

    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        return perror("mmap"), 3;

    double start = now();
    pid_t child = fork(); /* (b) another process; itimers are not inherited */
    if (child < 0)
        return perror("fork"), 3;
    if (child == 0) {
        start_alarm();
        worker(3);
        stop_alarm();
        _exit(0);
    }
    start_alarm();
    pthread_t thread; /* (a) another thread */
    if (pthread_create(&thread, NULL, thread_main, (void *)2))
        return perror("pthread_create"), 3;
    worker(1);
    pthread_join(thread, NULL);
    stop_alarm();
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
        return fprintf(stderr, "vecregs: child failed (status %#x)\n", status), 3;

    long checks = shared->checks, mismatches = shared->mismatches, signals = shared->signals;
    if (mismatches)
        printf("vecregs: first mismatch: %s\n", shared->first);
    printf("vecregs: %s checks=%ld mismatches=%ld signals=%ld seconds=%.2f\n", set_name, checks,
           mismatches, signals, now() - start);
    if (signals < min_signals)
        printf("vecregs: too few signals to matter (fewer than %ld)\n", min_signals);
    return mismatches == 0 && signals >= min_signals ? 0 : 1;
}
