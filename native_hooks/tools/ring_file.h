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

/* Records given up by the writer: the writer entries' drops and those of
 * threads that found no entry. */
static inline uint64_t read_ring_dropped(const char * path) {
    const gpuscope_ring_header h = read_ring_header(path);
    gpuscope_ring_writer w;
    uint64_t dropped = h.unattached_dropped;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    for (uint32_t i = 0; fd >= 0 && i < h.max_writers; i++) {
        if (pread(fd, &w, sizeof(w), (off_t)(h.writers_offset + i * sizeof(w))) != (ssize_t)sizeof(w)) {
            perror(path);
            exit(1);
        }
        dropped += w.dropped;
    }
    close(fd);
    return dropped;
}

#endif
