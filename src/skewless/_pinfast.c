/* skewless._pinfast: the first sight of a pin token in a cookie, in C.
 *
 * Optional accelerator of skewless.core.pin.PinCodec.verify_cookie (see
 * docs/decisions/pin-c-accelerator.md). The pure-Python code in skewless/core/pin.py is
 * the specification and the fallback: Verifier.check answers exactly as that code does,
 * and answers False ("not sure: ask Python") for every input it does not fully handle.
 *
 *   Verifier(keys, pin_type)
 *       keys: sequence of (key_id: str, secret: bytes); pin_type: the Pin NamedTuple.
 *   Verifier.check(app: str, segment: bytes, now: float, idle: float, life: float)
 *       -> Pin | None | False
 *
 * The token is s1.KID.SID.IAT.SEEN.VERSION.SIG (SIG after the last dot, the first five
 * fields split on the first five dots of the rest). SIG is the lower-case hex of the first
 * 16 bytes of HMAC-SHA256(secret, APP "\n" BODY), BODY = everything before the last dot.
 *
 * False is answered when the segment holds '"', space or tab (the cookie's value is then
 * not the segment: Python's _cookie_slow decides), when IAT or SEEN is not 1-15 plain ASCII
 * digits (Python's int() accepts signs, '_' and whitespace, and 15 digits keep every
 * number exact in a double), or when an argument is not of the exact expected type. In
 * every other case the answer is final: a Pin when the token verifies, None otherwise.
 */

#define PY_SSIZE_T_CLEAN
#define OPENSSL_API_COMPAT 0x10100000L
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <Python.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define MAX_TOKEN 512
#define CLOCK_SKEW 60.0
#define MAX_DIGITS 15
#define MAX_APPS 1024
#define N_VERSIONS 16

typedef struct {
    PyObject *kid;   /* bytes: the key id as it appears in tokens */
    PyObject *kid_s; /* str: Pin.key_id */
    SHA256_CTX inner; /* after the padded key ^ ipad */
    SHA256_CTX outer; /* after the padded key ^ opad */
} Key;

typedef struct {
    PyObject_HEAD
    Py_ssize_t nkeys;
    Key *keys;
    PyTypeObject *pin_type;
    PyObject *per_app;                /* dict: app str -> bytes of nkeys SHA256_CTX */
    PyObject *versions[N_VERSIONS];   /* recent version strs (shared between pins) */
    int next_version;
} Verifier;

static void
Verifier_dealloc(Verifier *self)
{
    PyObject_GC_UnTrack(self);
    if (self->keys != NULL) {
        for (Py_ssize_t i = 0; i < self->nkeys; i++) {
            Py_XDECREF(self->keys[i].kid);
            Py_XDECREF(self->keys[i].kid_s);
            OPENSSL_cleanse(&self->keys[i].inner, sizeof(SHA256_CTX));
            OPENSSL_cleanse(&self->keys[i].outer, sizeof(SHA256_CTX));
        }
        PyMem_Free(self->keys);
    }
    Py_XDECREF(self->pin_type);
    Py_XDECREF(self->per_app);
    for (int i = 0; i < N_VERSIONS; i++) {
        Py_XDECREF(self->versions[i]);
    }
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
}

static int
Verifier_traverse(Verifier *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pin_type);
    Py_VISIT(self->per_app);
    return 0;
}

static int
Verifier_init(Verifier *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"keys", "pin_type", NULL};
    PyObject *keys, *pin_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Verifier", kwlist, &keys, &pin_type)) {
        return -1;
    }
    if (self->keys != NULL) { /* once only, even after a failed __init__ */
        PyErr_SetString(PyExc_TypeError, "Verifier: already initialised");
        return -1;
    }
    if (!PyType_Check(pin_type) ||
        !PyType_IsSubtype((PyTypeObject *)pin_type, &PyTuple_Type) ||
        ((PyTypeObject *)pin_type)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "Verifier: pin_type must be a tuple subclass with no slots");
        return -1;
    }
    PyObject *seq = PySequence_Fast(keys, "Verifier: keys must be a sequence");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "Verifier: at least one key");
        return -1;
    }
    Key *arr = PyMem_Calloc((size_t)n, sizeof(Key));
    if (arr == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->keys = arr;
    self->nkeys = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *kid_s, *secret;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "UO!", &kid_s, &PyBytes_Type, &secret)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "Verifier: each key is (key_id: str, secret: bytes)");
            }
            Py_DECREF(seq);
            return -1;
        }
        PyObject *kid = PyUnicode_AsUTF8String(kid_s);
        if (kid == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        Key *k = &arr[i];
        k->kid = kid;
        Py_INCREF(kid_s);
        k->kid_s = kid_s;
        self->nkeys = i + 1;

        unsigned char block[64];
        unsigned char pad[64];
        memset(block, 0, sizeof(block));
        const char *s = PyBytes_AS_STRING(secret);
        Py_ssize_t slen = PyBytes_GET_SIZE(secret);
        if (slen > 64) {
            SHA256((const unsigned char *)s, (size_t)slen, block);
        } else {
            memcpy(block, s, (size_t)slen);
        }
        for (int j = 0; j < 64; j++) {
            pad[j] = block[j] ^ 0x36;
        }
        SHA256_Init(&k->inner);
        SHA256_Update(&k->inner, pad, 64);
        for (int j = 0; j < 64; j++) {
            pad[j] = block[j] ^ 0x5c;
        }
        SHA256_Init(&k->outer);
        SHA256_Update(&k->outer, pad, 64);
        OPENSSL_cleanse(block, sizeof(block));
        OPENSSL_cleanse(pad, sizeof(pad));
    }
    Py_DECREF(seq);
    Py_INCREF(pin_type);
    self->pin_type = (PyTypeObject *)pin_type;
    self->per_app = PyDict_New();
    if (self->per_app == NULL) {
        return -1;
    }
    return 0;
}

/* The inner states of every key after APP "\n" (made once per app). Borrowed buffer. */
static const SHA256_CTX *
app_prefixes(Verifier *self, PyObject *app)
{
    PyObject *entry = PyDict_GetItemWithError(self->per_app, app);
    if (entry != NULL) {
        return (const SHA256_CTX *)PyBytes_AS_STRING(entry);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t alen;
    const char *a = PyUnicode_AsUTF8AndSize(app, &alen);
    if (a == NULL) {
        return NULL;
    }
    entry = PyBytes_FromStringAndSize(NULL, self->nkeys * (Py_ssize_t)sizeof(SHA256_CTX));
    if (entry == NULL) {
        return NULL;
    }
    SHA256_CTX *ctx = (SHA256_CTX *)PyBytes_AS_STRING(entry);
    for (Py_ssize_t i = 0; i < self->nkeys; i++) {
        ctx[i] = self->keys[i].inner;
        SHA256_Update(&ctx[i], a, (size_t)alen);
        SHA256_Update(&ctx[i], "\n", 1);
    }
    if (PyDict_GET_SIZE(self->per_app) >= MAX_APPS) {
        PyDict_Clear(self->per_app);
    }
    if (PyDict_SetItem(self->per_app, app, entry) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    Py_DECREF(entry); /* the dict holds it */
    return ctx;
}

/* 1-15 plain ASCII digits -> 0 and *out; anything else -> -1 (Python decides). */
static int
parse_digits(const char *p, Py_ssize_t n, long long *out)
{
    if (n < 1 || n > MAX_DIGITS) {
        return -1;
    }
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < '0' || c > '9') {
            return -1;
        }
        v = v * 10 + (c - '0');
    }
    *out = v;
    return 0;
}

static int
is_ascii(const char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((unsigned char)p[i] & 0x80) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
ascii_str(const char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    }
    return s;
}

/* The version as a str, shared with earlier pins of the same version. New reference. */
static PyObject *
version_str(Verifier *self, const char *p, Py_ssize_t n)
{
    for (int i = 0; i < N_VERSIONS; i++) {
        PyObject *v = self->versions[i];
        if (v != NULL && PyUnicode_GET_LENGTH(v) == n &&
            memcmp(PyUnicode_1BYTE_DATA(v), p, (size_t)n) == 0) {
            Py_INCREF(v);
            return v;
        }
    }
    PyObject *v = ascii_str(p, n);
    if (v == NULL) {
        return NULL;
    }
    int slot = self->next_version;
    self->next_version = (slot + 1) % N_VERSIONS;
    Py_XSETREF(self->versions[slot], Py_NewRef(v));
    return v;
}

static const char HEX[] = "0123456789abcdef";

static PyObject *
Verifier_check(Verifier *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "check(app, segment, now, idle, life)");
        return NULL;
    }
    PyObject *app = args[0], *segment = args[1];
    if (self->per_app == NULL) { /* set last by a successful __init__ */
        PyErr_SetString(PyExc_TypeError, "Verifier: not initialised");
        return NULL;
    }
    if (!PyUnicode_CheckExact(app) || !PyBytes_CheckExact(segment) ||
        !PyFloat_CheckExact(args[2]) || !PyFloat_CheckExact(args[3]) ||
        !PyFloat_CheckExact(args[4])) {
        Py_RETURN_FALSE;
    }
    const double now = PyFloat_AS_DOUBLE(args[2]);
    const double idle = PyFloat_AS_DOUBLE(args[3]);
    const double life = PyFloat_AS_DOUBLE(args[4]);
    const char *tok = PyBytes_AS_STRING(segment);
    const Py_ssize_t len = PyBytes_GET_SIZE(segment);

    /* '"', space or tab: the value ends there, not at ';' (Python: _cookie_slow). */
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)tok[i];
        if (c == '"' || c == ' ' || c == '\t') {
            Py_RETURN_FALSE;
        }
    }
    /* From here on the segment is the cookie's value: every failure is final (None),
     * except numbers that are not plain digits (False). */
    if (len > MAX_TOKEN) {
        Py_RETURN_NONE;
    }
    const char *last = NULL;
    for (Py_ssize_t i = len; i > 0; i--) {
        if (tok[i - 1] == '.') {
            last = tok + i - 1;
            break;
        }
    }
    if (last == NULL) {
        Py_RETURN_NONE;
    }
    const Py_ssize_t blen = last - tok; /* BODY = tok[:blen] */
    const char *field[6];
    Py_ssize_t flen[6];
    const char *p = tok;
    const char *end = tok + blen;
    for (int f = 0; f < 5; f++) {
        const char *d = memchr(p, '.', (size_t)(end - p));
        if (d == NULL) {
            Py_RETURN_NONE; /* fewer than six fields */
        }
        field[f] = p;
        flen[f] = d - p;
        p = d + 1;
    }
    field[5] = p;
    flen[5] = end - p;

    long long iat, seen;
    if (parse_digits(field[3], flen[3], &iat) < 0 || parse_digits(field[4], flen[4], &seen) < 0) {
        Py_RETURN_FALSE;
    }
    const Key *key = NULL;
    Py_ssize_t ki = 0;
    for (; ki < self->nkeys; ki++) {
        PyObject *kid = self->keys[ki].kid;
        if (PyBytes_GET_SIZE(kid) == flen[1] &&
            memcmp(PyBytes_AS_STRING(kid), field[1], (size_t)flen[1]) == 0) {
            key = &self->keys[ki];
            break;
        }
    }
    /* Exact in doubles: both numbers are below 10**15 < 2**53. */
    const double diat = (double)iat, dseen = (double)seen;
    if (key == NULL || flen[0] != 2 || field[0][0] != 's' || field[0][1] != '1' ||
        !(iat <= seen) || !(dseen <= now + CLOCK_SKEW) || now - dseen > idle ||
        now - diat > life) {
        Py_RETURN_NONE;
    }
    const char *sig = last + 1;
    if (tok + len - sig != 32) {
        Py_RETURN_NONE;
    }

    const SHA256_CTX *prefixes = app_prefixes(self, app);
    if (prefixes == NULL) {
        return NULL;
    }
    SHA256_CTX ctx = prefixes[ki];
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Update(&ctx, tok, (size_t)blen);
    SHA256_Final(digest, &ctx);
    ctx = key->outer;
    SHA256_Update(&ctx, digest, sizeof(digest));
    SHA256_Final(digest, &ctx);
    OPENSSL_cleanse(&ctx, sizeof(ctx));
    char hex[32];
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = HEX[digest[i] >> 4];
        hex[2 * i + 1] = HEX[digest[i] & 15];
    }
    if (CRYPTO_memcmp(hex, sig, 32) != 0) {
        Py_RETURN_NONE;
    }
    /* The MAC makes the rest ours; a leaked key must still not make a non-ASCII str. */
    if (!is_ascii(field[2], flen[2]) || !is_ascii(field[5], flen[5])) {
        Py_RETURN_NONE;
    }
    PyObject *pin = self->pin_type->tp_alloc(self->pin_type, 7);
    if (pin == NULL) {
        return NULL;
    }
    PyObject *sid = ascii_str(field[2], flen[2]);
    PyObject *version = sid ? version_str(self, field[5], flen[5]) : NULL;
    PyObject *liat = version ? PyLong_FromLongLong(iat) : NULL;
    PyObject *lseen = liat ? PyLong_FromLongLong(seen) : NULL;
    if (lseen == NULL) {
        Py_XDECREF(sid);
        Py_XDECREF(version);
        Py_XDECREF(liat);
        Py_DECREF(pin);
        return NULL;
    }
    Py_INCREF(app);
    PyTuple_SET_ITEM(pin, 0, app);
    Py_INCREF(key->kid_s);
    PyTuple_SET_ITEM(pin, 1, key->kid_s);
    PyTuple_SET_ITEM(pin, 2, sid);
    PyTuple_SET_ITEM(pin, 3, version);
    PyTuple_SET_ITEM(pin, 4, liat);
    PyTuple_SET_ITEM(pin, 5, lseen);
    Py_INCREF(segment);
    PyTuple_SET_ITEM(pin, 6, segment);
    return pin;
}

static PyMethodDef Verifier_methods[] = {
    {"check", (PyCFunction)(void (*)(void))Verifier_check, METH_FASTCALL,
     "check(app, segment, now, idle, life) -> Pin | None | False (False: ask Python)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Verifier_repr(Verifier *self)
{
    return PyUnicode_FromFormat("_pinfast.Verifier(<%zd keys>)", self->nkeys);
}

static PyTypeObject VerifierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "skewless._pinfast.Verifier",
    .tp_basicsize = sizeof(Verifier),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Pin token check for the cookie miss path (see skewless.core.pin).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Verifier_init,
    .tp_dealloc = (destructor)Verifier_dealloc,
    .tp_traverse = (traverseproc)Verifier_traverse,
    .tp_methods = Verifier_methods,
    .tp_repr = (reprfunc)Verifier_repr,
};

static struct PyModuleDef pinfast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "skewless._pinfast",
    .m_doc = "C accelerator of the pin check (optional; skewless.core.pin is the reference).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__pinfast(void)
{
    if (PyType_Ready(&VerifierType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&pinfast_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&VerifierType);
    if (PyModule_AddObject(m, "Verifier", (PyObject *)&VerifierType) < 0) {
        Py_DECREF(&VerifierType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
