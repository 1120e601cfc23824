/*
 * loopback-rtt: the round trip of 100 bytes between two processes over
 * TCP on 127.0.0.1 (TCP_NODELAY), the floor under any request that crosses
 * from one process to another on this machine. compare-postgres.sh builds
 * it with `cc` and prints its p50 beside one fdatasync, as the reference
 * for a synchronous commit: one fsync plus one round trip to the standby.
 *
 * Usage: loopback-rtt [ROUND_TRIPS]   (default 20000)
 * Prints: "<p50 us> <p99 us>" on one line.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MESSAGE 100

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return d < 0 ? -1 : d > 0;
}

static int read_full(int fd, char *buf, int len) {
    int got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r <= 0) return -1;
        got += (int)r;
    }
    return 0;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    if (n < 100) {
        fprintf(stderr, "loopback-rtt: ROUND_TRIPS must be at least 100\n");
        return 2;
    }
    int one = 1;
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) < 0 ||
        listen(listener, 1) < 0 || getsockname(listener, (struct sockaddr *)&addr, &len) < 0)
        die("loopback-rtt: listening on 127.0.0.1");

    pid_t echo = fork();
    if (echo < 0) die("loopback-rtt: fork");
    if (echo == 0) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) die("loopback-rtt: accept");
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char buf[MESSAGE];
        while (read_full(c, buf, MESSAGE) == 0)
            if (write(c, buf, MESSAGE) != MESSAGE) break;
        _exit(0);
    }

    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("loopback-rtt: connecting");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *samples = malloc(sizeof(double) * n);
    if (!samples) die("loopback-rtt: malloc");
    char buf[MESSAGE] = {0};
    for (int i = 0; i < n; i++) {
        double t0 = now_us();
        if (write(s, buf, MESSAGE) != MESSAGE || read_full(s, buf, MESSAGE) != 0)
            die("loopback-rtt: round trip");
        samples[i] = now_us() - t0;
    }
    close(s);
    waitpid(echo, NULL, 0);
    qsort(samples, n, sizeof(double), by_value);
    printf("%.1f %.1f\n", samples[n / 2], samples[(long)n * 99 / 100]);
    return 0;
}
