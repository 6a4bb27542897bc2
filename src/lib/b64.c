#include "b64.h"

#include <errno.h>
#include <stdint.h>

static const char enc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t b64_encode(const void *in, size_t n, char *out, bool pad)
{
    const uint8_t *s = in;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        o[0] = enc[v >> 18];
        o[1] = enc[(v >> 12) & 63];
        o[2] = enc[(v >> 6) & 63];
        o[3] = enc[v & 63];
        o += 4;
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        *o++ = enc[v >> 18];
        *o++ = enc[(v >> 12) & 63];
        if (i + 1 < n)
            *o++ = enc[(v >> 6) & 63];
        else if (pad)
            *o++ = '=';
        if (pad)
            *o++ = '=';
    }
    return (size_t)(o - out);
}

size_t b64_decoded_max(size_t n)
{
    return (n + 3) / 4 * 3;
}

static int dec1(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

long b64_decode(const char *in, size_t n, void *out)
{
    uint8_t *o = out;
    /* Strip padding; more than two '=' or '=' in the middle is malformed. */
    size_t padn = 0;
    while (n > 0 && in[n - 1] == '=' && padn < 2) {
        n--;
        padn++;
    }
    if (n % 4 == 1)
        return -EINVAL;
    if (padn && (n + padn) % 4 != 0)
        return -EINVAL;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = dec1((unsigned char)in[i]);
        if (v < 0)
            return -EINVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)(o - (uint8_t *)out);
}
