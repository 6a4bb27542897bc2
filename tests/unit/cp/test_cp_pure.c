/* Unit tests of the control plane's pure pieces: JWT, ids, slugs, key hashing, times (the
 * audit cursor's encoding), UTF-8 validation, the error table and the rate limiter. */
#include "api/api.h"
#include "auth/jwt.h"
#include "auth/ratelimit.h"
#include "auth/secret.h"
#include "cp_util.h"

#include <setjmp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static const unsigned char KEY[] = "0123456789abcdef0123456789abcdef";

static jwt_claims_t claims(int64_t exp_delta)
{
    jwt_claims_t c = {0};
    strcpy(c.sub, "usr_1");
    strcpy(c.team_id, "team_1");
    strcpy(c.email, "a@b.c");
    strcpy(c.role, "owner");
    c.iat = (int64_t)time(NULL);
    c.exp = c.iat + exp_delta;
    return c;
}

static void test_jwt_roundtrip(void **s)
{
    (void)s;
    jwt_claims_t c = claims(60), out;
    c.is_admin = true;
    char *t = jwt_sign(KEY, 32, &c);
    assert_int_equal(jwt_verify(KEY, 32, t, c.iat, &out, NULL), 0);
    assert_string_equal(out.sub, "usr_1");
    assert_string_equal(out.team_id, "team_1");
    assert_string_equal(out.role, "owner");
    assert_true(out.is_admin);
    assert_int_equal(out.exp, c.exp);
    /* Another key, expiry, truncation, extra segment, tampering. */
    static const unsigned char other[] = "fedcba9876543210fedcba9876543210";
    assert_int_equal(jwt_verify(other, 32, t, c.iat, &out, NULL), -EKEYREJECTED);
    assert_int_equal(jwt_verify(KEY, 32, t, c.exp, &out, NULL), -EKEYREJECTED);
    assert_int_equal(jwt_verify(KEY, 32, t, c.exp - 1, &out, NULL), 0);
    char *cut = strdup(t);
    cut[strlen(cut) - 1] = '\0';
    assert_int_equal(jwt_verify(KEY, 32, cut, c.iat, &out, NULL), -EKEYREJECTED);
    char *more = malloc(strlen(t) + 3);
    sprintf(more, "%s.x", t);
    assert_int_equal(jwt_verify(KEY, 32, more, c.iat, &out, NULL), -EKEYREJECTED);
    assert_int_equal(jwt_verify(KEY, 32, "", c.iat, &out, NULL), -EKEYREJECTED);
    assert_int_equal(jwt_verify(KEY, 32, "a.b.c", c.iat, &out, NULL), -EKEYREJECTED);
    assert_int_equal(jwt_verify(KEY, 32, NULL, c.iat, &out, NULL), -EKEYREJECTED);
    free(cut);
    free(more);
    free(t);
}

static void test_jwt_alg_pinned(void **s)
{
    (void)s;
    jwt_claims_t c = claims(60), out;
    char *t = jwt_sign(KEY, 32, &c);
    const char *dot = strchr(t, '.');
    /* {"alg":"none"} and {"alg":"HS512"} headers over the same payload and signature. */
    const char *hdrs[] = {"eyJhbGciOiJub25lIn0", "eyJhbGciOiJIUzUxMiJ9", "eyJ0eXAiOiJKV1QifQ"};
    for (size_t i = 0; i < 3; i++) {
        char *forged = malloc(strlen(t) + 64);
        sprintf(forged, "%s%s", hdrs[i], dot);
        assert_int_equal(jwt_verify(KEY, 32, forged, c.iat, &out, NULL), -EKEYREJECTED);
        free(forged);
    }
    free(t);
}

static void test_ids_and_slugs(void **s)
{
    (void)s;
    char a[64], b[64];
    cp_id_new("usr_", a, sizeof a);
    cp_id_new("usr_", b, sizeof b);
    assert_int_equal(strlen(a), 4 + 32);
    assert_true(cp_id_valid("usr_", a));
    assert_string_not_equal(a, b);
    assert_false(cp_id_valid("team_", a));
    assert_false(cp_id_valid("usr_", "usr_0123"));
    assert_false(cp_id_valid("usr_", "usr_0123456789ABCDEF0123456789abcdef"));
    assert_false(cp_id_valid("usr_", NULL));
    char sl[14];
    cp_slug_new(sl);
    assert_true(cp_slug_valid(sl));
    assert_int_equal(sl[6], '-');
    assert_false(cp_slug_valid("abcdef_012345"));
}

static void test_key_hash(void **s)
{
    (void)s;
    char h[SECRET_HASH_HEX];
    secret_key_hash("abc", h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    char key[SECRET_KEY_MAX], hash[SECRET_HASH_HEX], shown[64];
    secret_key_new("e2b_", key, sizeof key, hash, shown, sizeof shown);
    assert_int_equal(strlen(key), 44);
    assert_int_equal(strncmp(key, "e2b_", 4), 0);
    assert_int_equal(strspn(key + 4, "0123456789abcdef"), 40);
    assert_int_equal(strncmp(key, shown, strlen(shown)), 0);
    secret_key_hash(key, h);
    assert_string_equal(h, hash);
}

static void test_password(void **s)
{
    (void)s;
    char h[128];
    assert_int_equal(secret_pw_hash("correct horse", 1, 64, h), 0);
    assert_int_equal(strncmp(h, "$argon2id$", 10), 0);
    assert_true(secret_pw_verify("correct horse", h));
    assert_false(secret_pw_verify("correct horsE", h));
    assert_false(secret_pw_verify("correct horse", NULL));
}

static void test_times(void **s)
{
    (void)s;
    char out[CP_TIME_LEN];
    int64_t us = 0;
    assert_int_equal(cp_time_parse("2026-03-22T21:01:23.123456Z", &us), 0);
    cp_time_fmt(us, out);
    assert_string_equal(out, "2026-03-22T21:01:23.123456Z");
    /* PostgreSQL's ISO output, offsets, no fraction, nanoseconds truncated. */
    assert_true(cp_time_norm("2026-03-22 21:01:23.123456+00", out));
    assert_string_equal(out, "2026-03-22T21:01:23.123456Z");
    assert_true(cp_time_norm("2026-03-22 21:01:23+00", out));
    assert_string_equal(out, "2026-03-22T21:01:23.000000Z");
    assert_true(cp_time_norm("2026-03-22T23:01:23.5+02:00", out));
    assert_string_equal(out, "2026-03-22T21:01:23.500000Z");
    assert_true(cp_time_norm("2026-03-22T21:01:23.123456789Z", out));
    assert_string_equal(out, "2026-03-22T21:01:23.123456Z");
    const char *bad[] = {"",
                         "2026-03-22",
                         "2026-03-22T21:01:23",
                         "2026-13-22T21:01:23Z",
                         "2026-03-22T21:01:23.Z",
                         "2026-03-22T21:01:23Zx",
                         "yesterday",
                         "2026-03-22T21:01:23.1234567890Z",
                         "2026-03-22T21:01:23+5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(cp_time_parse(bad[i], &us), -EINVAL);
    assert_false(cp_time_norm(NULL, out));
    /* Fixed width: the canonical form sorts as text in time order. */
    char a[CP_TIME_LEN], b[CP_TIME_LEN];
    cp_time_fmt(1000000, a);
    cp_time_fmt(999999, b);
    assert_true(strcmp(b, a) < 0);
}

static void test_utf8(void **s)
{
    (void)s;
    assert_true(cp_utf8_valid("plain"));
    assert_true(cp_utf8_valid("\xe2\x9c\x93 \xf0\x9f\x98\x80"));
    assert_false(cp_utf8_valid("\xff"));
    assert_false(cp_utf8_valid("\xc0\xaf"));         /* overlong */
    assert_false(cp_utf8_valid("\xed\xa0\x80"));     /* surrogate */
    assert_false(cp_utf8_valid("\xf4\x90\x80\x80")); /* > U+10FFFF */
    assert_false(cp_utf8_valid("\xe2\x9c"));         /* truncated */
}

static void test_error_table(void **s)
{
    (void)s;
    assert_int_equal(cp_err_lookup(-EINVAL).http, 400);
    assert_string_equal(cp_err_lookup(-EINVAL).name, "invalid_request");
    assert_int_equal(cp_err_lookup(-EKEYREJECTED).http, 401);
    assert_string_equal(cp_err_lookup(-EACCES).name, "forbidden");
    assert_int_equal(cp_err_lookup(-ENOENT).http, 404);
    assert_int_equal(cp_err_lookup(-EOPNOTSUPP).http, 405);
    assert_int_equal(cp_err_lookup(CP_E_EMAIL_TAKEN).http, 409);
    assert_string_equal(cp_err_lookup(CP_E_EMAIL_TAKEN).name, "email_taken");
    assert_int_equal(cp_err_lookup(CP_E_NO_TEAM).http, 403);
    assert_int_equal(cp_err_lookup(-EMSGSIZE).http, 413);
    assert_int_equal(cp_err_lookup(-EUSERS).http, 429);
    assert_int_equal(cp_err_lookup(-EIO).http, 500);
    assert_int_equal(cp_err_lookup(-ENOTSOCK).http, 500); /* unknown → internal */
}

static void test_ratelimit(void **s)
{
    (void)s;
    rl_t *r = rl_new(3, 10);
    for (int i = 0; i < 3; i++) {
        assert_false(rl_blocked(r, "e:a", 100));
        rl_fail(r, "e:a", 100);
    }
    assert_true(rl_blocked(r, "e:a", 105));
    assert_false(rl_blocked(r, "e:b", 105));
    assert_false(rl_blocked(r, "e:a", 110)); /* window over */
    /* Many keys never grow memory and never crash. */
    char k[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(k, sizeof k, "a:%d", i);
        rl_fail(r, k, 200);
    }
    rl_free(r);
    rl_t *off = rl_new(0, 10);
    rl_fail(off, "x", 1);
    assert_false(rl_blocked(off, "x", 1));
    rl_free(off);
}

int main(void)
{
    cmocka_set_message_output(CM_OUTPUT_TAP);
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jwt_roundtrip), cmocka_unit_test(test_jwt_alg_pinned),
        cmocka_unit_test(test_ids_and_slugs), cmocka_unit_test(test_key_hash),
        cmocka_unit_test(test_password),      cmocka_unit_test(test_times),
        cmocka_unit_test(test_utf8),          cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_ratelimit),
    };
    return cmocka_run_group_tests_name("cp_pure", tests, NULL, NULL);
}
