#include "jwt.h"
#include "b64.h"
#include "xalloc.h"

#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* The one header we emit and the one algorithm we accept. */
static const char HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static char *b64url(const void *data, size_t n)
{
    char *out = xmalloc(b64_encoded_len(n) + 1);
    size_t w = b64_encode(data, n, out, false);
    out[w] = '\0';
    for (char *p = out; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
    }
    return out;
}

static void mac(const unsigned char *key, size_t keylen, const char *data, size_t n,
                unsigned char out[crypto_auth_hmacsha256_BYTES])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, keylen);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)data, n);
    crypto_auth_hmacsha256_final(&st, out);
}

char *jwt_sign(const unsigned char *key, size_t keylen, const jwt_claims_t *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "sub", json_string(c->sub));
    json_object_set_new(o, "team_id", json_string(c->team_id));
    json_object_set_new(o, "email", json_string(c->email));
    json_object_set_new(o, "name", json_string(c->name));
    json_object_set_new(o, "role", json_string(c->role));
    if (c->is_admin)
        json_object_set_new(o, "is_admin", json_true());
    json_object_set_new(o, "iat", json_integer(c->iat));
    json_object_set_new(o, "exp", json_integer(c->exp));
    char *payload = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *h = b64url(HEADER, strlen(HEADER));
    char *p = b64url(payload, strlen(payload));
    free(payload);
    char *signing = xasprintf("%s.%s", h, p);
    unsigned char sig[crypto_auth_hmacsha256_BYTES];
    mac(key, keylen, signing, strlen(signing), sig);
    char *s = b64url(sig, sizeof sig);
    char *tok = xasprintf("%s.%s", signing, s);
    free(h);
    free(p);
    free(signing);
    free(s);
    return tok;
}

/* Decode one base64url segment (no padding allowed) into a malloc'd NUL-terminated buffer. */
static char *seg_decode(const char *s, size_t n, size_t *outlen)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return NULL;
    }
    char *out = xmalloc(b64_decoded_max(n) + 1);
    long w = b64_decode(s, n, out);
    if (w < 0) {
        free(out);
        return NULL;
    }
    out[w] = '\0';
    *outlen = (size_t)w;
    return out;
}

static bool copy_str(json_t *o, const char *k, char *dst, size_t n, bool required)
{
    json_t *v = json_object_get(o, k);
    if (!v)
        return !required;
    if (!json_is_string(v) || json_string_length(v) >= n)
        return false;
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return true;
}

int jwt_verify(const unsigned char *key, size_t keylen, const char *token, int64_t now,
               jwt_claims_t *out, err_t *e)
{
    int rc = -EKEYREJECTED;
    char *hdr = NULL, *pl = NULL, *sig = NULL;
    json_t *hj = NULL, *pj = NULL;
    memset(out, 0, sizeof *out);
    size_t len = token ? strnlen(token, JWT_MAX_LEN + 1) : 0;
    if (len == 0 || len > JWT_MAX_LEN)
        goto out;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        goto out;
    size_t hl = 0, pll = 0, sl = 0;
    hdr = seg_decode(token, (size_t)(d1 - token), &hl);
    pl = seg_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pll);
    sig = seg_decode(d2 + 1, len - (size_t)(d2 + 1 - token), &sl);
    if (!hdr || !pl || !sig || sl != crypto_auth_hmacsha256_BYTES)
        goto out;
    /* Check the algorithm before anything else is trusted: only HS256, never "none". */
    hj = json_loadb(hdr, hl, JSON_REJECT_DUPLICATES, NULL);
    json_t *alg = json_object_get(hj, "alg");
    if (!json_is_object(hj) || !json_is_string(alg) || strcmp(json_string_value(alg), "HS256"))
        goto out;
    unsigned char want[crypto_auth_hmacsha256_BYTES];
    mac(key, keylen, token, (size_t)(d2 - token), want);
    if (sodium_memcmp(want, sig, sizeof want) != 0)
        goto out;
    pj = json_loadb(pl, pll, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(pj))
        goto out;
    json_t *typ = json_object_get(pj, "typ");
    if (typ && (!json_is_string(typ) || !strcmp(json_string_value(typ), "host")))
        goto out;
    json_t *exp = json_object_get(pj, "exp"), *iat = json_object_get(pj, "iat");
    if (!json_is_integer(exp) || json_integer_value(exp) <= now)
        goto out;
    out->exp = json_integer_value(exp);
    out->iat = json_is_integer(iat) ? json_integer_value(iat) : 0;
    if (!copy_str(pj, "sub", out->sub, sizeof out->sub, true) ||
        !copy_str(pj, "team_id", out->team_id, sizeof out->team_id, true) ||
        !copy_str(pj, "email", out->email, sizeof out->email, false) ||
        !copy_str(pj, "name", out->name, sizeof out->name, false) ||
        !copy_str(pj, "role", out->role, sizeof out->role, false))
        goto out;
    out->is_admin = json_is_true(json_object_get(pj, "is_admin"));
    rc = 0;
out:
    if (rc < 0)
        err_set(e, rc, "invalid or expired token");
    json_decref(hj);
    json_decref(pj);
    free(hdr);
    free(pl);
    free(sig);
    return rc;
}
