#include "httpc.h"
#include "xalloc.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct httpc {
    CURL *curl;
};

int httpc_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

httpc_t *httpc_new(void)
{
    httpc_t *c = xcalloc(1, sizeof *c);
    c->curl = curl_easy_init();
    if (!c->curl)
        abort();
    return c;
}

void httpc_free(httpc_t *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

void httpc_resp_init(httpc_resp_t *r)
{
    r->status = 0;
    buf_init(&r->body);
    buf_init(&r->headers);
}

void httpc_resp_fini(httpc_resp_t *r)
{
    buf_fini(&r->body);
    buf_fini(&r->headers);
}

bool httpc_resp_header(const httpc_resp_t *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = r->headers.data;
    while (p && *p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = (size_t)(p + len - v);
            while (vl && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
                vl--;
            if (vl >= n)
                vl = n - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return true;
        }
        p = eol ? eol + 1 : NULL;
    }
    return false;
}

struct ctx {
    const httpc_req_t *req;
    httpc_resp_t *resp;
    bool aborted;
};

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
    struct ctx *x = ud;
    size_t n = size * nmemb;
    if (x->req->on_data) {
        if (x->req->on_data(x->req->ud, data, n) < 0) {
            x->aborted = true;
            return 0;
        }
        return n;
    }
    buf_add(&x->resp->body, data, n);
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    struct ctx *x = ud;
    size_t n = size * nmemb;
    /* A new status line (after 100 Continue or a redirect) starts a fresh header block. */
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
        buf_reset(&x->resp->headers);
    buf_add(&x->resp->headers, data, n);
    return n;
}

static size_t on_read(char *dst, size_t size, size_t nmemb, void *ud)
{
    struct ctx *x = ud;
    long n = x->req->body_read(x->req->ud, dst, size * nmemb);
    if (n < 0)
        return CURL_READFUNC_ABORT;
    return (size_t)n;
}

int httpc_do(httpc_t *c, const httpc_req_t *req, httpc_resp_t *resp, err_t *e)
{
    CURL *h = c->curl;
    struct ctx x = {.req = req, .resp = resp};
    struct curl_slist *hl = NULL;
    int rc = 0;

    curl_easy_reset(h);
    buf_reset(&resp->body);
    buf_reset(&resp->headers);
    resp->status = 0;
    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    if (req->timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    if (req->connect_timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
    if (req->idle_timeout_ms > 0) {
        /* libcurl's low-speed check works in whole seconds: < 1 byte/s for that long aborts. */
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
                         req->idle_timeout_ms < 1000 ? 1L : req->idle_timeout_ms / 1000);
    }
    if (req->accept_gzip)
        curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "gzip");
    for (const char *const *p = req->headers; p && *p; p++)
        hl = curl_slist_append(hl, *p);
    /* libcurl would otherwise send "Expect: 100-continue" and wait for large bodies. */
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);

    const char *m = req->method ? req->method : "GET";
    if (req->body_read) {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, &x);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    } else if (req->body || strcmp(m, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(m, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    } else if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(m, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
    }

    CURLcode cr = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    if (cr != CURLE_OK) {
        if (x.aborted)
            rc = err_set(e, -ECANCELED, "transfer stopped by the receiver");
        else if (cr == CURLE_COULDNT_CONNECT) {
            /* Refused (a listener-less port answered) or unreachable (nothing answered ARP):
             * callers tell "the host is up" from "it is not" by this. */
            long oe = 0;
            curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oe);
            int code = oe > 0 && oe != ECONNREFUSED ? -(int)oe : -ECONNREFUSED;
            rc = err_set(e, code, "%s: %s", req->url, curl_easy_strerror(cr));
        } else if (cr == CURLE_OPERATION_TIMEDOUT)
            rc = err_set(e, -ETIMEDOUT, "%s: %s", req->url, curl_easy_strerror(cr));
        else
            rc = err_set(e, -EIO, "%s: %s", req->url, curl_easy_strerror(cr));
    }
    curl_slist_free_all(hl);
    return rc;
}
