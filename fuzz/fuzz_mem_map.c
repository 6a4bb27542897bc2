/* libFuzzer target: the memory map header decoder (mem_map_decode, src/agent/mem). Whatever it
 * accepts must pass mem_map_check, be in normal form, re-encode to exactly the input (the
 * format has one encoding per map), decode again to an equal map and answer lookups the way its
 * extents say. Each input is tried twice: as given, and with its last four bytes replaced by the
 * right CRC-32, so the checks behind the CRC are reached too (a mutated input almost never has a
 * matching CRC by chance). */
#include "fuzz.h"
#include "mem.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static void check_equal(const mem_map_t *a, const mem_map_t *b)
{
    FUZZ_CHECK(a->block_size == b->block_size && a->size == b->size);
    FUZZ_CHECK(a->generation == b->generation);
    FUZZ_CHECK(memcmp(&a->id, &b->id, sizeof a->id) == 0);
    FUZZ_CHECK(a->nlayers == b->nlayers);
    FUZZ_CHECK(memcmp(a->layers, b->layers, a->nlayers * sizeof a->layers[0]) == 0);
    FUZZ_CHECK(a->next == b->next);
    for (size_t i = 0; i < a->next; i++)
        FUZZ_CHECK(a->ext[i].block == b->ext[i].block && a->ext[i].count == b->ext[i].count &&
                   a->ext[i].layer == b->ext[i].layer);
}

static void one(const uint8_t *data, size_t size)
{
    err_t e = {0};
    mem_map_t *m = NULL;
    int r = mem_map_decode(data, size, &m, &e);
    FUZZ_CHECK(r == 0 || r == -EBADMSG);
    FUZZ_CHECK((r == 0) == (m != NULL));
    if (r < 0) {
        FUZZ_CHECK(e.code == -EBADMSG && e.msg[0] != '\0');
        return;
    }
    FUZZ_CHECK(mem_map_check(m, &e) == 0);

    void *enc = NULL;
    size_t len = 0;
    FUZZ_CHECK(mem_map_encode(m, &enc, &len, &e) == 0);
    FUZZ_CHECK(len == size && memcmp(enc, data, size) == 0);
    mem_map_t *again = NULL;
    FUZZ_CHECK(mem_map_decode(enc, len, &again, &e) == 0);
    check_equal(m, again);

    /* Already normal: normalising changes nothing. */
    mem_map_t *d = mem_map_dup(m);
    FUZZ_CHECK(mem_map_normalise(d, &e) == 0);
    check_equal(m, d);

    /* Lookups at both ends of every extent agree with the extent. */
    uint64_t total = 0;
    for (size_t i = 0; i < m->next; i++) {
        const mem_extent_t *x = &m->ext[i];
        uint64_t run = 0;
        FUZZ_CHECK(mem_map_lookup(m, x->block, &run) == x->layer && run == x->count);
        FUZZ_CHECK(mem_map_lookup(m, x->block + x->count - 1, &run) == x->layer && run == 1);
        total += x->count;
    }
    FUZZ_CHECK(total == m->size / m->block_size);
    uint64_t sum = mem_map_blocks_in(m, MEM_ZERO);
    for (uint32_t l = 0; l < m->nlayers; l++) {
        uint64_t n = mem_map_blocks_in(m, l);
        FUZZ_CHECK(n > 0);
        sum += n;
    }
    FUZZ_CHECK(sum == total);

    mem_map_free(d);
    mem_map_free(again);
    free(enc);
    mem_map_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        data = (const uint8_t *)""; /* libFuzzer may pass NULL for the empty input */
    one(data, size);
    if (size >= 4) {
        uint8_t *fixed = malloc(size);
        FUZZ_CHECK(fixed != NULL);
        memcpy(fixed, data, size);
        uint32_t crc = (uint32_t)crc32(0L, fixed, (uInt)(size - 4));
        for (int i = 0; i < 4; i++)
            fixed[size - 4 + i] = (uint8_t)(crc >> (8 * i));
        one(fixed, size);
        free(fixed);
    }
    return 0;
}
