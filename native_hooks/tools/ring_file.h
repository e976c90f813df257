/* Shared by the ring tools: the header of a ring file as it is on disk. */
#ifndef GPUSCOPE_TOOLS_RING_FILE_H
#define GPUSCOPE_TOOLS_RING_FILE_H

#include "../gpuscope_ring.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Counters are final once the ring is closed: read them back from the file. */
static inline gpuscope_ring_header read_ring_header(const char * path) {
    gpuscope_ring_header h;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
        perror(path);
        exit(1);
    }
    close(fd);
    return h;
}

#endif
