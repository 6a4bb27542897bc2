#include "gz.h"
#include "xalloc.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* windowBits for zlib: 15-bit window, +16 selects the gzip wrapper (not zlib, not raw). */
#define GZ_WBITS (15 + 16)

struct gz_inflate {
    z_stream z;
    gz_sink_fn sink;
    void *ud;
    char *out;
    bool in_member; /* inside a member: its end has not been seen yet */
    bool any;       /* at least one member began */
    int err;
};

gz_inflate_t *gz_inflate_new(gz_sink_fn sink, void *ud)
{
    gz_inflate_t *g = xcalloc(1, sizeof *g);
    g->sink = sink;
    g->ud = ud;
    if (inflateInit2(&g->z, GZ_WBITS) != Z_OK)
        abort(); /* only fails for lack of memory, or a zlib that does not match its header */
    g->out = xmalloc(GZ_CHUNK);
    return g;
}

void gz_inflate_free(gz_inflate_t *g)
{
    if (!g)
        return;
    inflateEnd(&g->z);
    free(g->out);
    free(g);
}

static int inflate_fail(gz_inflate_t *g, int code, err_t *e, const char *msg)
{
    g->err = code;
    return err_set(e, code, "%s", msg);
}

int gz_inflate_feed(gz_inflate_t *g, const void *data, size_t len, err_t *e)
{
    if (g->err)
        return err_set(e, g->err, "gzip body already failed");
    const unsigned char *p = data;
    while (len) {
        /* zlib counts in uInt; feed huge pieces in slices. */
        uInt slice = len > (1u << 30) ? (1u << 30) : (uInt)len;
        g->z.next_in = (Bytef *)p;
        g->z.avail_in = slice;
        p += slice;
        len -= slice;
        while (g->z.avail_in) {
            if (!g->in_member) {
                /* A new member starts here: after the first, only another member may follow. */
                if (g->any && inflateReset(&g->z) != Z_OK)
                    return inflate_fail(g, -EIO, e, "gzip decoder reset failed");
                g->in_member = true;
                g->any = true;
            }
            g->z.next_out = (Bytef *)g->out;
            g->z.avail_out = GZ_CHUNK;
            int zr = inflate(&g->z, Z_NO_FLUSH);
            size_t got = GZ_CHUNK - g->z.avail_out;
            if (zr == Z_NEED_DICT || zr == Z_DATA_ERROR || zr == Z_STREAM_ERROR)
                return inflate_fail(g, -EINVAL, e, "malformed gzip body");
            if (zr == Z_MEM_ERROR)
                return inflate_fail(g, -ENOMEM, e, "gzip decoder out of memory");
            if (got) {
                int rc = g->sink(g->ud, g->out, got, e);
                if (rc < 0) {
                    g->err = rc;
                    return rc;
                }
            }
            if (zr == Z_STREAM_END)
                g->in_member = false;
            else if (zr == Z_BUF_ERROR && !got)
                break; /* no progress possible: needs more input */
        }
    }
    return 0;
}

int gz_inflate_finish(gz_inflate_t *g, err_t *e)
{
    if (g->err)
        return err_set(e, g->err, "gzip body already failed");
    /* Output that zlib still holds back is flushed by feeding nothing until it is done. */
    while (g->in_member) {
        g->z.next_in = NULL;
        g->z.avail_in = 0;
        g->z.next_out = (Bytef *)g->out;
        g->z.avail_out = GZ_CHUNK;
        int zr = inflate(&g->z, Z_NO_FLUSH);
        size_t got = GZ_CHUNK - g->z.avail_out;
        if (got) {
            int rc = g->sink(g->ud, g->out, got, e);
            if (rc < 0) {
                g->err = rc;
                return rc;
            }
        }
        if (zr == Z_STREAM_END) {
            g->in_member = false;
            break;
        }
        if (!got || zr != Z_OK)
            return inflate_fail(g, -EINVAL, e, "gzip body is truncated");
    }
    if (!g->any)
        return inflate_fail(g, -EINVAL, e, "gzip body is empty");
    return 0;
}

struct gz_deflate {
    z_stream z;
    gz_source_fn source;
    void *ud;
    char *in;
    bool in_eof;
    bool done;
};

gz_deflate_t *gz_deflate_new(int level, gz_source_fn source, void *ud)
{
    gz_deflate_t *g = xcalloc(1, sizeof *g);
    g->source = source;
    g->ud = ud;
    if (level < 1 || level > 9)
        level = Z_DEFAULT_COMPRESSION;
    if (deflateInit2(&g->z, level, Z_DEFLATED, GZ_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort(); /* only fails for lack of memory */
    g->in = xmalloc(GZ_CHUNK);
    return g;
}

void gz_deflate_free(gz_deflate_t *g)
{
    if (!g)
        return;
    deflateEnd(&g->z);
    free(g->in);
    free(g);
}

ssize_t gz_deflate_read(gz_deflate_t *g, char *dst, size_t max)
{
    if (g->done)
        return 0;
    if (max > (1u << 30))
        max = 1u << 30;
    g->z.next_out = (Bytef *)dst;
    g->z.avail_out = (uInt)max;
    for (;;) {
        if (!g->z.avail_in && !g->in_eof) {
            ssize_t n = g->source(g->ud, g->in, GZ_CHUNK);
            if (n < 0)
                return n;
            if (n == 0)
                g->in_eof = true;
            g->z.next_in = (Bytef *)g->in;
            g->z.avail_in = (uInt)n;
        }
        int zr = deflate(&g->z, g->in_eof ? Z_FINISH : Z_NO_FLUSH);
        if (zr == Z_STREAM_ERROR)
            return -EIO;
        size_t made = max - g->z.avail_out;
        if (zr == Z_STREAM_END)
            g->done = true;
        if (made)
            return (ssize_t)made;
        if (g->done)
            return 0;
    }
}
