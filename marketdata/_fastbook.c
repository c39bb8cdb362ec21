/*
 * marketdata._fastbook: the market-data feed's per-entry hot path, compiled (issue #3).
 *
 * Optional: marketdata/fastbook.py imports it when it was built (`make install` runs
 * `setup.py build_ext --inplace`) and POLYSIM_FEED_PURE is not set; otherwise the pure-Python
 * path in messages.py / book.py / bus.py does the same work. tests/marketdata/test_fastbook.py
 * replays the same frames through both and requires identical books, hashes, tops and counters.
 *
 * Books: a fastbook.NativeOrderBook keeps its levels in a `Levels` (below: one sorted C array
 * per side), with its timestamp and hash, which the feed, the top encoder and the hash text
 * use directly (encode_top and hash_text take a plain OrderBook too, through its slots). A
 * compiled BookKeeper keeps the per-token state the feed and the flush need in a `Tokens`
 * table and on each book's Levels (the pending hash claim, the dirty mark, and a copy of the
 * token's liveness, freshness and last trade side); everything else of the keeper (snapshots,
 * hash checks, resyncs, FeedStats) stays in Python.
 *
 * Levels()
 *     One book's levels held in C, with the OrderBook operations NativeOrderBook needs.
 * Tokens()
 *     A compiled BookKeeper's tracked tokens, keyed by the token id's bytes (see below).
 * feed_price_change(keeper, raw) -> bool
 *     A strict scanner for exactly the `price_change` frame Polymarket sends (reference §2:
 *     {market, price_changes:[{asset_id, price, size, side, hash, best_bid, best_ask}],
 *     timestamp, event_type}), keys in any order, JSON whitespace allowed, every value a plain
 *     ASCII string without escapes. It validates the WHOLE frame first; if anything at all is
 *     unusual (another event, an array frame, escapes, non-ASCII, numbers or null, duplicate
 *     keys, a missing field, a bad side, price or size, malformed JSON) it returns False having
 *     changed nothing, and the caller runs the Python path, which counts and rejects exactly as
 *     it always did. Otherwise it applies every entry with the effects of
 *     BookKeeper._feed_price_change (same counters, same claims, same dirty tokens, the same
 *     level rules as OrderBook._set_level) and returns True.
 * encode_top(book, fresh, last_trade_side, depth, published_at, mid_spread) -> bytes | None
 *     bus.encode_top byte for byte; None when a field needs the Python encoder, and the
 *     caller then uses it.
 * encode_tops(...), pack_publish(...), encode_pack(...)
 *     The flush: BookKeeper.drain_tops_json's loop over a Tokens table, publisher.pack_publish,
 *     and both in one pass (BookKeeper.drain_tops_packed: each top written straight into the
 *     Redis payload).
 *     A NativeOrderBook's Levels keeps what its next top will reuse: each side's top levels
 *     until a change lands among them, the top's head (token id, market), mid and spread
 *     for the same best prices, its Redis key and shard.
 * hash_text(book, timestamp, last_trade_price) -> bytes
 *     The text OrderBook.compute_hash feeds to SHA-1 (Polymarket's recipe), built in one pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Word-at-a-time byte tests: has_zero(x) is non-zero iff some byte of x is zero. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline uint64_t has_zero(uint64_t x) { return (x - ONES) & ~x & HIGHS; }

#if PY_VERSION_HEX >= 0x030C0000
#define STR_READY(o) 1
#else
#define STR_READY(o) PyUnicode_IS_READY(o)
#endif

/* ---------------------------------------------------------------------------------------- */
/* interned names and module state (single-phase init: one interpreter)                      */

static PyObject *s_stats, *s_tokens, *s_verify, *s_frames, *s_events, *s_entries_applied,
    *s_entries_untracked, *s_entries_skipped_resync, *s_bids, *s_asks, *s_bid_px, *s_ask_px,
    *s_timestamp, *s_hash, *s_verify_m, *s_price_change, *s_flush, *s_entry, *s_asset_id,
    *s_market, *s_last_trade_price, *s_tick_size, *s_min_order_size, *s_neg_risk;

static PyObject *g_price_strs = NULL;   /* book._PRICE_STRS */
static PyObject *g_parse_price = NULL;  /* book.parse_price */
static PyObject *g_dumps = NULL;        /* orjson.dumps */

/* OrderBook's __slots__, read straight at their offsets when the object is exactly an
 * OrderBook (bind() finds the offsets from the class's member descriptors): the generic
 * attribute protocol costs more than the rest of a top's work. */
enum {
    F_BIDS, F_ASKS, F_BID_PX, F_ASK_PX, F_TIMESTAMP, F_HASH, F_ASSET_ID, F_MARKET,
    F_LAST_TRADE_PRICE, F_TICK_SIZE, F_MIN_ORDER_SIZE, F_NEG_RISK, F_COUNT
};
static PyObject *g_book_type = NULL;
/* fastbook.NativeOrderBook: inherits these slots, except that its timestamp and hash are
 * properties over its Levels (the slots of those names stay empty) */
static PyObject *g_native_type = NULL;
static Py_ssize_t g_offsets[F_COUNT];
static PyObject **g_field_names[F_COUNT] = {
    &s_bids, &s_asks, &s_bid_px, &s_ask_px, &s_timestamp, &s_hash, &s_asset_id, &s_market,
    &s_last_trade_price, &s_tick_size, &s_min_order_size, &s_neg_risk};

/* New reference to book.<field>. */
static inline PyObject *book_get(PyObject *book, int f) {
    PyObject *type = (PyObject *)Py_TYPE(book);
    if ((type == g_book_type || (type == g_native_type && f != F_TIMESTAMP && f != F_HASH)) &&
        g_offsets[f] >= 0) {
        PyObject *v = *(PyObject **)((char *)book + g_offsets[f]);
        if (v) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(book, *g_field_names[f]);
}

static int bind_book_type(PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "book type must be a class");
        return -1;
    }
    for (int f = 0; f < F_COUNT; f++) {
        g_offsets[f] = -1;
        PyObject *d = PyObject_GetAttr(cls, *g_field_names[f]);
        if (!d) return -1;
        if (Py_TYPE(d) == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) g_offsets[f] = m->offset;
        }
        Py_DECREF(d);
    }
    Py_INCREF(cls);
    Py_XSETREF(g_book_type, cls);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* growable byte buffer                                                                       */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
    char small[4096];
} buf_t;

static void buf_init(buf_t *b) {
    b->p = b->small;
    b->n = 0;
    b->cap = (Py_ssize_t)sizeof(b->small);
}

static void buf_free(buf_t *b) {
    if (b->p != b->small) PyMem_Free(b->p);
}

static int buf_reserve(buf_t *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->n + extra) cap *= 2;
    char *p;
    if (b->p == b->small) {
        p = PyMem_Malloc((size_t)cap);
        if (p) memcpy(p, b->small, (size_t)b->n);
    } else {
        p = PyMem_Realloc(b->p, (size_t)cap);
    }
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    return 0;
}

#define BUF_LIT(b, lit) buf_put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* 1 if ASCII text can be written as a JSON string as it is: no '"', '\\', control byte or DEL
 * (orjson escapes those). Every id, price, size and hash Polymarket sends is. */
static int json_plain(const char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) { /* a word without '"', '\\', control bytes or DEL */
        uint64_t x;
        memcpy(&x, p + i, 8);
        if (has_zero(x ^ (ONES * '"')) | has_zero(x ^ (ONES * '\\')) |
            ((x - ONES * 0x20) & ~x & HIGHS) | has_zero(x ^ (ONES * 0x7f)))
            break;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f) return 0;
    }
    return 1;
}

static int buf_quoted(buf_t *b, const char *p, Py_ssize_t n) {
    if (buf_reserve(b, n + 2) < 0) return -1;
    b->p[b->n++] = '"';
    memcpy(b->p + b->n, p, (size_t)n);
    b->n += n;
    b->p[b->n++] = '"';
    return 0;
}

/* A str as orjson.dumps writes it: plain text is copied as is; anything else asks orjson. */
static int buf_json_str(buf_t *b, PyObject *s) {
    if (s == Py_None) return BUF_LIT(b, "null");
    if (PyUnicode_CheckExact(s) && STR_READY(s) && PyUnicode_IS_ASCII(s) &&
        json_plain((const char *)PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s)))
        return buf_quoted(b, (const char *)PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s));
    PyObject *enc = PyObject_CallOneArg(g_dumps, s);
    if (!enc) return -1;
    int r = buf_put(b, PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc));
    Py_DECREF(enc);
    return r;
}

/* The same for ASCII text held as bytes. */
static int buf_json_ascii(buf_t *b, const char *p, Py_ssize_t n) {
    if (json_plain(p, n)) return buf_quoted(b, p, n);
    PyObject *s = PyUnicode_DecodeASCII(p, n, NULL);
    if (!s) return -1;
    int r = buf_json_str(b, s);
    Py_DECREF(s);
    return r;
}

/* ---------------------------------------------------------------------------------------- */
/* the strict price_change scanner                                                            */

typedef struct {
    const char *p;
    Py_ssize_t n;
} span_t;

typedef struct {
    span_t asset, price, size, hash;
    int is_bid, has_hash;
    /* apply_entries' */
    PyObject *price_obj; /* the canonical price str (strong) */
    uint64_t h;          /* the token id's hash */
    void *row;           /* its table row, once looked up (a tok_t *) */
} entry_t;

typedef struct {
    const char *s, *end;
    entry_t *entries;
    Py_ssize_t count, cap;
    entry_t small[32];
    span_t ts;
} scan_t;

static inline void skip_ws(scan_t *sc) {
    while (sc->s < sc->end &&
           (*sc->s == ' ' || *sc->s == '\n' || *sc->s == '\r' || *sc->s == '\t'))
        sc->s++;
}

/* The end of a JSON string's contents from just after its opening quote: its closing quote,
 * if what comes before it is printable ASCII without escapes; else NULL. */
static inline const char *str_end(const char *s, const char *end) {
#if defined(__SSE2__)
    /* Sixteen bytes at a time: the first '"', '\\', control byte or byte >= 0x80 (a signed
     * byte below 0x20 is one of the last two) ends the run; only a '"' ends it well. */
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                  space = _mm_set1_epi8(0x20);
    while (end - s >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)s);
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmplt_epi8(x, space));
        int mask = _mm_movemask_epi8(m);
        if (mask) {
            s += __builtin_ctz((unsigned)mask);
            return *s == '"' ? s : NULL;
        }
        s += 16;
    }
#endif
    for (; s < end; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') return s;
        if (c == '\\' || c < 0x20 || c >= 0x80) return NULL;
    }
    return NULL;
}

/* A JSON string without escapes, printable ASCII only: its contents in *out. */
static int scan_str(scan_t *sc, span_t *out) {
    if (sc->s >= sc->end || *sc->s != '"') return 0;
    const char *start = sc->s + 1, *q = str_end(start, sc->end);
    if (!q) return 0;
    out->p = start;
    out->n = q - start;
    sc->s = q + 1;
    return 1;
}

static inline int span_is(span_t sp, const char *lit, Py_ssize_t n) {
    return sp.n == n && memcmp(sp.p, lit, (size_t)n) == 0;
}
#define SPAN_IS(sp, lit) span_is((sp), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* book._is_plain_decimal: ASCII digits with at most one '.', at least one digit. */
static int plain_decimal(span_t v) {
    int dots = 0, digits = 0;
    for (Py_ssize_t i = 0; i < v.n; i++) {
        char c = v.p[i];
        if (c >= '0' && c <= '9')
            digits++;
        else if (c == '.' && !dots)
            dots = 1;
        else
            return 0;
    }
    return digits > 0;
}

/* book.parse_price: a plain decimal with 0 < value <= 1. */
static int valid_price(span_t v) {
    if (!plain_decimal(v)) return 0;
    Py_ssize_t i = 0;
    int int_nonzero = 0, int_is_one = 0, frac_nonzero = 0;
    for (; i < v.n && v.p[i] != '.'; i++) {
        if (v.p[i] != '0') {
            int_is_one = !int_nonzero && v.p[i] == '1';
            if (int_nonzero) int_is_one = 0;
            int_nonzero = 1;
        }
    }
    for (i++; i < v.n; i++)
        if (v.p[i] != '0') frac_nonzero = 1;
    if (int_nonzero) return int_is_one && !frac_nonzero; /* exactly 1 */
    return frac_nonzero;
}

/* The checks every entry passes: a token id, a side, a price and a size (book.py's rules). */
static int entry_valid(entry_t *e, span_t side) {
    if (e->asset.n == 0) return 0;
    if (SPAN_IS(side, "BUY"))
        e->is_bid = 1;
    else if (SPAN_IS(side, "SELL"))
        e->is_bid = 0;
    else
        return 0;
    return valid_price(e->price) && plain_decimal(e->size);
}

/* An entry exactly as Polymarket writes it (compact, its keys in this order):
 * {"asset_id":"..","price":"..","size":"..","side":"..","hash":"..","best_bid":"..",
 * "best_ask":".."}. 1 with the entry read (sc->s past it), 0 with sc->s unchanged if the
 * entry is not in that form (scan_entry reads any other form). */
static int scan_entry_compact(scan_t *sc, entry_t *e) {
    const char *s = sc->s, *end = sc->end, *q;
    span_t side;
#define LIT(lit)                                                                           \
    do {                                                                                   \
        if (end - s < (Py_ssize_t)sizeof(lit) - 1 || memcmp(s, lit, sizeof(lit) - 1)) return 0; \
        s += sizeof(lit) - 1;                                                              \
    } while (0)
#define VAL(sp)                                       \
    do {                                              \
        if (!(q = str_end(s, end))) return 0;         \
        (sp) = (span_t){s, q - s};                    \
        s = q + 1;                                    \
    } while (0)
#define SKIP()                                        \
    do {                                              \
        if (!(q = str_end(s, end))) return 0;         \
        s = q + 1;                                    \
    } while (0)
    LIT("{\"asset_id\":\"");
    VAL(e->asset);
    LIT(",\"price\":\"");
    VAL(e->price);
    LIT(",\"size\":\"");
    VAL(e->size);
    LIT(",\"side\":\"");
    VAL(side);
    LIT(",\"hash\":\"");
    VAL(e->hash);
    LIT(",\"best_bid\":\""); /* best_bid and best_ask: checked as strings, not used */
    SKIP();
    LIT(",\"best_ask\":\"");
    SKIP();
    LIT("}");
#undef LIT
#undef VAL
#undef SKIP
    e->has_hash = 1;
    if (!entry_valid(e, side)) return 0;
    sc->s = s;
    return 1;
}

static int scan_entry(scan_t *sc, entry_t *e) {
    enum { K_ASSET = 1, K_PRICE = 2, K_SIZE = 4, K_SIDE = 8, K_HASH = 16, K_BB = 32, K_BA = 64 };
    int seen = 0;
    span_t side = {NULL, 0};
    e->has_hash = 0;
    if (sc->s >= sc->end || *sc->s != '{') return 0;
    sc->s++;
    skip_ws(sc);
    if (sc->s < sc->end && *sc->s == '}') return 0; /* an empty entry: let Python reject it */
    for (;;) {
        span_t key, val;
        skip_ws(sc);
        if (!scan_str(sc, &key)) return 0;
        skip_ws(sc);
        if (sc->s >= sc->end || *sc->s != ':') return 0;
        sc->s++;
        skip_ws(sc);
        if (!scan_str(sc, &val)) return 0;
        int bit;
        if (SPAN_IS(key, "asset_id")) {
            bit = K_ASSET;
            e->asset = val;
        } else if (SPAN_IS(key, "price")) {
            bit = K_PRICE;
            e->price = val;
        } else if (SPAN_IS(key, "size")) {
            bit = K_SIZE;
            e->size = val;
        } else if (SPAN_IS(key, "side")) {
            bit = K_SIDE;
            side = val;
        } else if (SPAN_IS(key, "hash")) {
            bit = K_HASH;
            e->hash = val;
            e->has_hash = 1;
        } else if (SPAN_IS(key, "best_bid")) {
            bit = K_BB;
        } else if (SPAN_IS(key, "best_ask")) {
            bit = K_BA;
        } else {
            return 0; /* an unknown key: not the shape we specialise for */
        }
        if (seen & bit) return 0; /* duplicate key */
        seen |= bit;
        skip_ws(sc);
        if (sc->s >= sc->end) return 0;
        if (*sc->s == ',') {
            sc->s++;
            continue;
        }
        if (*sc->s != '}') return 0;
        sc->s++;
        break;
    }
    if ((seen & (K_ASSET | K_PRICE | K_SIZE | K_SIDE)) != (K_ASSET | K_PRICE | K_SIZE | K_SIDE))
        return 0;
    return entry_valid(e, side);
}

static int scan_changes(scan_t *sc) {
    if (sc->s >= sc->end || *sc->s != '[') return 0;
    sc->s++;
    skip_ws(sc);
    if (sc->s < sc->end && *sc->s == ']') {
        sc->s++;
        return 1;
    }
    for (;;) {
        skip_ws(sc);
        if (sc->count == sc->cap) {
            Py_ssize_t cap = sc->cap * 2;
            entry_t *p;
            if (sc->entries == sc->small) {
                p = PyMem_Malloc(sizeof(entry_t) * (size_t)cap);
                if (p) memcpy(p, sc->small, sizeof(entry_t) * (size_t)sc->count);
            } else {
                p = PyMem_Realloc(sc->entries, sizeof(entry_t) * (size_t)cap);
            }
            if (!p) return 0; /* the Python path will run out of memory properly */
            sc->entries = p;
            sc->cap = cap;
        }
        entry_t *e = &sc->entries[sc->count];
        if (!scan_entry_compact(sc, e) && !scan_entry(sc, e)) return 0;
        sc->count++;
        skip_ws(sc);
        if (sc->s >= sc->end) return 0;
        if (*sc->s == ',') {
            sc->s++;
            continue;
        }
        if (*sc->s != ']') return 0;
        sc->s++;
        return 1;
    }
}

/* The whole frame; 1 if it is a price_change we can apply as is. */
static int scan_frame(scan_t *sc) {
    enum { K_EVENT = 1, K_CHANGES = 2, K_TS = 4, K_MARKET = 8 };
    int seen = 0;
    skip_ws(sc);
    if (sc->s >= sc->end || *sc->s != '{') return 0;
    sc->s++;
    for (;;) {
        span_t key, val;
        int bit;
        skip_ws(sc);
        if (!scan_str(sc, &key)) return 0;
        skip_ws(sc);
        if (sc->s >= sc->end || *sc->s != ':') return 0;
        sc->s++;
        skip_ws(sc);
        if (SPAN_IS(key, "price_changes")) {
            bit = K_CHANGES;
            if (seen & bit) return 0;
            if (!scan_changes(sc)) return 0;
        } else {
            if (!scan_str(sc, &val)) return 0;
            if (SPAN_IS(key, "event_type")) {
                bit = K_EVENT;
                if (!SPAN_IS(val, "price_change")) return 0;
            } else if (SPAN_IS(key, "timestamp")) {
                bit = K_TS;
                sc->ts = val;
            } else if (SPAN_IS(key, "market")) {
                bit = K_MARKET;
            } else {
                return 0;
            }
        }
        if (seen & bit) return 0;
        seen |= bit;
        skip_ws(sc);
        if (sc->s >= sc->end) return 0;
        if (*sc->s == ',') {
            sc->s++;
            continue;
        }
        if (*sc->s != '}') return 0;
        sc->s++;
        break;
    }
    skip_ws(sc);
    if (sc->s != sc->end) return 0;
    if ((seen & (K_EVENT | K_CHANGES | K_TS)) != (K_EVENT | K_CHANGES | K_TS)) return 0;
    return sc->ts.n > 0;
}

/* ---------------------------------------------------------------------------------------- */
/* feed_price_change                                                                          */

static inline PyObject *ascii_str(span_t sp) {
    PyObject *s = PyUnicode_New(sp.n, 127);
    if (s) memcpy(PyUnicode_DATA(s), sp.p, (size_t)sp.n);
    return s;
}

/* The canonical price strs (book._PRICE_STRS) by their bytes: a price that recurs on every
 * frame costs a hash of its few bytes and a compare, not a new str and a dict lookup. Open
 * addressing, doubled when half full (it stays small, so in cache), and cleared instead past
 * TABLE_MAX slots: bounded whatever the feed sends. */
#define TABLE_MIN (1 << 12)
#define TABLE_MAX (1 << 18)
typedef struct {
    uint64_t h;
    PyObject *s;
} slot_t;
static slot_t *g_table = NULL;
static Py_ssize_t g_table_used = 0, g_slots = 0;

static inline uint64_t hash_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

static void table_clear(void) {
    if (!g_table) return;
    for (Py_ssize_t i = 0; i < g_slots; i++) Py_CLEAR(g_table[i].s);
    g_table_used = 0;
}

/* Make room for one more entry: double the table, or clear it at its maximum size. */
static int table_make_room(void) {
    if (g_table && g_table_used < g_slots / 2) return 0;
    if (g_table && g_slots >= TABLE_MAX) {
        table_clear();
        return 0;
    }
    Py_ssize_t slots = g_table ? g_slots * 2 : TABLE_MIN;
    slot_t *t = PyMem_Calloc((size_t)slots, sizeof(slot_t));
    if (!t) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; g_table && k < g_slots; k++) {
        if (!g_table[k].s) continue;
        size_t i = (size_t)g_table[k].h & (size_t)(slots - 1);
        while (t[i].s) i = (i + 1) & (size_t)(slots - 1);
        t[i] = g_table[k];
    }
    PyMem_Free(g_table);
    g_table = t;
    g_slots = slots;
    return 0;
}

static inline PyObject *ascii_str(span_t sp);

/* A new reference to the canonical str of the validated price `sp` (registered through
 * book.parse_price when new, as validation in Python does). */
static PyObject *price_str(span_t sp) {
    if (table_make_room() < 0) return NULL;
    uint64_t h = hash_bytes(sp.p, sp.n) | 1; /* 0 marks an empty slot */
    size_t mask = (size_t)(g_slots - 1), i = (size_t)h & mask;
    for (;;) {
        slot_t *slot = &g_table[i];
        if (!slot->s) break;
        if (slot->h == h && PyUnicode_GET_LENGTH(slot->s) == sp.n &&
            memcmp(PyUnicode_DATA(slot->s), sp.p, (size_t)sp.n) == 0) {
            Py_INCREF(slot->s);
            return slot->s;
        }
        i = (i + 1) & mask;
    }
    PyObject *s = ascii_str(sp);
    if (!s) return NULL;
    PyObject *canon = PyDict_GetItemWithError(g_price_strs, s);
    if (!canon) {
        if (PyErr_Occurred()) goto fail;
        /* A price never seen: register it the way validation in Python does. */
        PyObject *value = PyObject_CallOneArg(g_parse_price, s);
        if (!value) goto fail;
        int ok = value != Py_None;
        Py_DECREF(value);
        if (!ok) {
            PyErr_Format(PyExc_RuntimeError, "_fastbook and parse_price disagree on %R", s);
            goto fail;
        }
        canon = PyDict_GetItemWithError(g_price_strs, s);
        if (!canon) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "parse_price did not register");
            goto fail;
        }
    }
    Py_INCREF(canon);
    Py_SETREF(s, canon);
    /* parse_price may have run Python code: another thread may have changed the table since
     * the probe above (inserted this very string, grown or cleared it). Probe again. */
    if (table_make_room() < 0) goto fail;
    mask = (size_t)(g_slots - 1);
    for (i = (size_t)h & mask; g_table[i].s; i = (i + 1) & mask) {
        if (g_table[i].h == h && PyUnicode_GET_LENGTH(g_table[i].s) == sp.n &&
            memcmp(PyUnicode_DATA(g_table[i].s), sp.p, (size_t)sp.n) == 0) {
            Py_DECREF(s);
            Py_INCREF(g_table[i].s);
            return g_table[i].s;
        }
    }
    g_table[i].h = h; /* a free slot of the current table (no Python code ran since) */
    Py_INCREF(s);
    g_table[i].s = s;
    g_table_used++;
    return s;
fail:
    Py_DECREF(s);
    return NULL;
}

/* obj.<name> += delta for an int attribute of the FeedStats dataclass. */
/* obj.<name>, read from the instance dict `d` when it holds it (cheaper than the attribute
 * protocol; BookKeeper and FeedStats keep these as plain instance attributes). */
static PyObject *inst_get(PyObject *obj, PyObject *d, PyObject *name) {
    if (d) {
        PyObject *v = PyDict_GetItemWithError(d, name);
        if (v) {
            Py_INCREF(v);
            return v;
        }
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.<name> += delta for an int attribute of the FeedStats dataclass. */
static int add_attr(PyObject *obj, PyObject *d, PyObject *name, Py_ssize_t delta) {
    if (delta == 0) return 0;
    if (d) { /* the usual case: an exact int in the instance dict, replaced in place */
        PyObject *cur = PyDict_GetItemWithError(d, name); /* borrowed */
        if (cur && PyLong_CheckExact(cur)) {
            Py_ssize_t x = PyLong_AsSsize_t(cur);
            if (!(x == -1 && PyErr_Occurred()) && x <= PY_SSIZE_T_MAX - delta) {
                PyObject *sum = PyLong_FromSsize_t(x + delta);
                if (!sum) return -1;
                int r = PyDict_SetItem(d, name, sum);
                Py_DECREF(sum);
                return r;
            }
        }
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear();
        }
    }
    PyObject *v = inst_get(obj, d, name);
    if (!v) return -1;
    PyObject *sum;
    if (PyLong_CheckExact(v)) {
        Py_ssize_t x = PyLong_AsSsize_t(v);
        sum = x == -1 && PyErr_Occurred() ? NULL : PyLong_FromSsize_t(x + delta);
        if (!sum && PyErr_ExceptionMatches(PyExc_OverflowError)) PyErr_Clear();
    } else {
        sum = NULL;
    }
    if (!sum && !PyErr_Occurred()) {
        PyObject *dl = PyLong_FromSsize_t(delta);
        sum = dl ? PyNumber_Add(v, dl) : NULL;
        Py_XDECREF(dl);
    }
    Py_DECREF(v);
    if (!sum) return -1;
    int has = d ? PyDict_Contains(d, name) : 0;
    int r = has < 0 ? -1 : has ? PyDict_SetItem(d, name, sum) : PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

static int dict_incr(PyObject *dict, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(dict, key);
    PyObject *sum;
    if (v == NULL) {
        if (PyErr_Occurred()) return -1;
        sum = PyLong_FromLong(1);
    } else if (PyLong_CheckExact(v)) {
        Py_ssize_t x = PyLong_AsSsize_t(v);
        if (x == -1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear();
            PyObject *one = PyLong_FromLong(1);
            if (!one) return -1;
            sum = PyNumber_Add(v, one);
            Py_DECREF(one);
        } else {
            sum = x < PY_SSIZE_T_MAX ? PyLong_FromSsize_t(x + 1) : NULL;
            if (!sum && !PyErr_Occurred()) {
                PyObject *one = PyLong_FromLong(1);
                if (!one) return -1;
                sum = PyNumber_Add(v, one);
                Py_DECREF(one);
            }
        }
    } else {
        PyObject *one = PyLong_FromLong(1);
        if (!one) return -1;
        sum = PyNumber_Add(v, one);
        Py_DECREF(one);
    }
    if (!sum) return -1;
    int r = PyDict_SetItem(dict, key, sum);
    Py_DECREF(sum);
    return r;
}

/* book.is_zero_size: only '0' and '.' (the size is already a valid plain decimal). */
static inline int is_zero_size(span_t sp) {
    for (Py_ssize_t i = 0; i < sp.n; i++)
        if (sp.p[i] != '0' && sp.p[i] != '.') return 0;
    return 1;
}

/* A book price's exact value as an integer number of 1e-18: every price in a book is a
 * validated plain decimal in (0, 1] (book.parse_price), so this orders exactly like the
 * Decimals of _PRICE_VALUES. 0 if the text is not such a price with <= 18 decimals: the caller
 * then leaves the work to OrderBook._set_level. */
static int price_key(PyObject *price, int64_t *out) {
    if (!PyUnicode_CheckExact(price) || !PyUnicode_IS_ASCII(price)) return 0;
    const char *p = (const char *)PyUnicode_DATA(price);
    Py_ssize_t n = PyUnicode_GET_LENGTH(price), i = 0;
    int64_t whole = 0, frac = 0;
    int digits = 0, places = 0;
    for (; i < n && p[i] != '.'; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        whole = whole * 10 + (p[i] - '0');
        if (whole > 1) return 0;
        digits++;
    }
    if (i < n) i++; /* the '.' */
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9' || ++places > 18) return 0;
        frac = frac * 10 + (p[i] - '0');
        digits++;
    }
    if (!digits) return 0;
    for (; places < 18; places++) frac *= 10;
    *out = whole * 1000000000000000000LL + frac;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Levels: one book's levels held in C (fastbook.NativeOrderBook)                             */
/*
 * Each side is one array sorted by exact price value with its best level LAST: bids
 * ascending, asks descending (the reverse of OrderBook's ascending `_ask_px`), so that a change
 * near the best price, where nearly all of them land, moves only the few levels behind it.
 * A level keeps its canonical price str (shared by every
 * book: hot in cache), the price's value in 1e-18 units for ordering (a longer price is
 * truncated there and compared exactly on ties) and its size's exact text inline: applying an
 * entry, encoding a top and building the hash text walk one contiguous array, not a dict,
 * a list and a str object per level.
 */
#define SIZE_INLINE 23

typedef struct {
    int64_t key;
    PyObject *price;    /* canonical price str */
    PyObject *size_obj; /* the size str when longer than SIZE_INLINE, else NULL */
    uint8_t size_len;
    char size[SIZE_INLINE];
} level_t;

typedef struct {
    level_t *v;
    Py_ssize_t n, cap;
    /* The published top's levels ([["p","s"],...], the best top_depth levels) as last
     * encoded, kept until a change lands among those levels (side_touched): most entries
     * touch one side only, or a level deeper than the top. Valid only when top_valid. */
    char *top;
    Py_ssize_t top_n, top_cap, top_depth;
    int top_valid;
} side_t;

/* What a flush reuses from one top to the next of the same book (encode_pack): each part
 * is kept with (strong references to) the objects it was built from and rebuilt as soon as
 * one of them is not the same object any more. */
typedef struct {
    PyObject *asset, *market; /* head: {"token_id":..,"market":.. */
    char *head;
    Py_ssize_t head_n;
    PyObject *token, *key_prefix; /* key: the MSET key's bulk string; shard: its stream */
    Py_ssize_t shards, shard;
    char *key;
    Py_ssize_t key_n;
} top_cache_t;

/* A book's timestamp and hash change with nearly every entry: the scanner writes their text
 * inline (while it is short ASCII) instead of making a str per entry; a str is made only when
 * Python reads the attribute (NativeOrderBook's properties), and kept for the next read. */
#define TS_CAP 24
#define HASH_CAP 48

typedef struct {
    PyObject_HEAD
    /* The keeper's state of this token, for the compiled feed and flush (see Tokens):
     * mirrored from BookKeeper (Tokens.sync) except `dirty` and `claim`, held here only. */
    uint8_t live;         /* in BookKeeper._live: deltas are applied to it */
    uint8_t fresh;        /* published fresh: live and not in an unproven trade burst */
    uint8_t dirty;        /* touched since the last drain, listed in its Tokens' dirty list */
    double verified_at;   /* its last flush-mode hash check (monotonic s; _TokenMeta's) */
    int16_t ts_n, hash_n; /* the inline text's length, or -1: the value is ts_obj/hash_obj */
    PyObject *claim;      /* flush mode: the price of the last hash-carrying entry, unchecked */
    PyObject *trade_side; /* the side of the token's last trade, NULL for None */
    PyObject *ts_obj, *hash_obj; /* the value as an object: a cache of the text, or the value */
    char ts[TS_CAP], hash[HASH_CAP];
    side_t side[2]; /* [0] asks, [1] bids */
    top_cache_t tc;
} LevelsObject;

static PyTypeObject Levels_Type;
static Py_ssize_t g_core_offset = -1;  /* its `_core` slot */

/* The value of a validated price in 1e-18 units, extra decimals truncated. */
static int64_t key_of(const char *p, Py_ssize_t n) {
    int64_t whole = 0, frac = 0;
    int places = 0;
    Py_ssize_t i = 0;
    for (; i < n && p[i] != '.'; i++) whole = whole * 10 + (p[i] - '0');
    if (i < n) i++;
    for (; i < n && places < 18; i++, places++) frac = frac * 10 + (p[i] - '0');
    for (; places < 18; places++) frac *= 10;
    return whole * 1000000000000000000LL + frac;
}

/* Exact order of two plain decimals (ties of key_of: more than 18 decimals, or equal). */
static int dec_cmp(const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) {
    const char *da = memchr(a, '.', (size_t)na), *db = memchr(b, '.', (size_t)nb);
    Py_ssize_t ia = da ? da - a : na, ib = db ? db - b : nb; /* integer part lengths */
    Py_ssize_t za = 0, zb = 0;
    while (za < ia && a[za] == '0') za++;
    while (zb < ib && b[zb] == '0') zb++;
    if (ia - za != ib - zb) return ia - za < ib - zb ? -1 : 1;
    int c = memcmp(a + za, b + zb, (size_t)(ia - za));
    if (c) return c < 0 ? -1 : 1;
    const char *fa = da ? da + 1 : a + na, *fb = db ? db + 1 : b + nb;
    Py_ssize_t la = a + na - fa, lb = b + nb - fb;
    while (la && fa[la - 1] == '0') la--;
    while (lb && fb[lb - 1] == '0') lb--;
    c = memcmp(fa, fb, (size_t)(la < lb ? la : lb));
    if (c) return c < 0 ? -1 : 1;
    return la == lb ? 0 : (la < lb ? -1 : 1);
}

/* The order of a level against a price in its side's order (ascending for bids, descending for
 * asks): < 0 if the level comes before it. */
static inline int lvl_cmp(const level_t *l, int asc, int64_t key, const char *p, Py_ssize_t n) {
    int c = l->key != key ? (l->key < key ? -1 : 1)
                          : dec_cmp((const char *)PyUnicode_DATA(l->price),
                                    PyUnicode_GET_LENGTH(l->price), p, n);
    return asc ? c : -c;
}

/* The first level not before the price in the side's order (bisect_left). Most changes land
 * near the best price, so it first walks a few levels in from the best end (the array's end:
 * one or two cache lines), then bisects what is left. */
#define SCAN_STEPS 8
static Py_ssize_t side_lower(const side_t *s, int asc, int64_t key, const char *p,
                             Py_ssize_t n) {
    Py_ssize_t lo = 0, hi = s->n, i = s->n;
    for (int steps = 0;; steps++) {
        if (i == 0 || lvl_cmp(&s->v[i - 1], asc, key, p, n) < 0) return i;
        if (steps == SCAN_STEPS) break;
        i--;
    }
    hi = i; /* v[i:] are not before the price, and v[i - 1] neither */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (lvl_cmp(&s->v[mid], asc, key, p, n) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void level_release(level_t *l) {
    Py_CLEAR(l->price);
    Py_CLEAR(l->size_obj);
}

static void side_clear(side_t *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) level_release(&s->v[i]);
    s->n = 0;
    s->top_valid = 0;
}

/* A level at index i (before the change; n levels before it) was changed, removed, or
 * inserted there: drop the cached top if that is among its best top_depth levels. The best
 * level is the last (distance n - 1 - i from the best); an insert at i lands at that distance
 * or one further, a removal shifts the levels before it, so the top changes only when the
 * distance is below top_depth. */
static inline void side_touched(side_t *s, Py_ssize_t i, Py_ssize_t n) {
    if (s->top_valid && n - 1 - i < s->top_depth) s->top_valid = 0;
}

/* The size text: inline when short, else as a str (size_obj given, or made from the text). */
static int level_set_size(level_t *l, const char *p, Py_ssize_t n, PyObject *size_obj) {
    if (n <= SIZE_INLINE) {
        memcpy(l->size, p, (size_t)n);
        l->size_len = (uint8_t)n;
        Py_CLEAR(l->size_obj);
        return 0;
    }
    PyObject *s = size_obj;
    if (s)
        Py_INCREF(s);
    else if (!(s = ascii_str((span_t){p, n})))
        return -1;
    Py_XSETREF(l->size_obj, s);
    l->size_len = 0;
    return 0;
}

/* A new str with the level's size. */
static PyObject *level_size_str(const level_t *l) {
    if (l->size_obj) {
        Py_INCREF(l->size_obj);
        return l->size_obj;
    }
    return ascii_str((span_t){l->size, l->size_len});
}

static inline void level_size_text(const level_t *l, const char **p, Py_ssize_t *n) {
    if (l->size_obj) {
        *p = (const char *)PyUnicode_DATA(l->size_obj);
        *n = PyUnicode_GET_LENGTH(l->size_obj);
    } else {
        *p = l->size;
        *n = l->size_len;
    }
}

/* OrderBook._set_level on a C side (asc: 1 for bids, 0 for asks): `price` is the canonical
 * str of a validated price, the size a validated plain decimal; zero deletes, the same value
 * spelled differently takes the newest spelling (one level per value). */
static int side_set(side_t *s, int asc, PyObject *price, const char *sp, Py_ssize_t sn,
                    PyObject *size_obj, int zero) {
    const char *pp = (const char *)PyUnicode_DATA(price);
    Py_ssize_t pn = PyUnicode_GET_LENGTH(price);
    int64_t key = key_of(pp, pn);
    Py_ssize_t i = side_lower(s, asc, key, pp, pn);
    int exists = i < s->n && (s->v[i].price == price || lvl_cmp(&s->v[i], asc, key, pp, pn) == 0);
    if (exists || !zero) side_touched(s, i, s->n);
    if (zero) {
        if (exists) {
            level_release(&s->v[i]);
            memmove(&s->v[i], &s->v[i + 1], sizeof(level_t) * (size_t)(s->n - i - 1));
            s->n--;
        }
        return 0;
    }
    if (exists) {
        level_t *l = &s->v[i];
        if (l->price != price) {
            Py_INCREF(price);
            Py_SETREF(l->price, price);
        }
        return level_set_size(l, sp, sn, size_obj);
    }
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 8;
        level_t *v = PyMem_Realloc(s->v, sizeof(level_t) * (size_t)cap);
        if (!v) {
            PyErr_NoMemory();
            return -1;
        }
        s->v = v;
        s->cap = cap;
    }
    memmove(&s->v[i + 1], &s->v[i], sizeof(level_t) * (size_t)(s->n - i));
    level_t *l = &s->v[i];
    memset(l, 0, sizeof *l);
    l->key = key;
    Py_INCREF(price);
    l->price = price;
    s->n++;
    if (level_set_size(l, sp, sn, size_obj) < 0) { /* undo the insert */
        level_release(l);
        memmove(&s->v[i], &s->v[i + 1], sizeof(level_t) * (size_t)(s->n - i - 1));
        s->n--;
        return -1;
    }
    return 0;
}

/* The canonical str of a validated price str (registered through parse_price if new). */
static PyObject *canonical_price(PyObject *price) {
    if (!PyUnicode_CheckExact(price) || !PyUnicode_IS_ASCII(price)) {
        PyErr_Format(PyExc_ValueError, "invalid price %R", price);
        return NULL;
    }
    span_t sp = {(const char *)PyUnicode_DATA(price), PyUnicode_GET_LENGTH(price)};
    if (!valid_price(sp)) {
        PyErr_Format(PyExc_ValueError, "invalid price %R", price);
        return NULL;
    }
    return price_str(sp);
}

static int check_size(PyObject *size) {
    if (!PyUnicode_CheckExact(size) || !PyUnicode_IS_ASCII(size) ||
        !plain_decimal((span_t){(const char *)PyUnicode_DATA(size), PyUnicode_GET_LENGTH(size)})) {
        PyErr_Format(PyExc_ValueError, "invalid size %R", size);
        return -1;
    }
    return 0;
}

static PyObject *Levels_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Levels() takes no arguments");
        return NULL;
    }
    LevelsObject *self = (LevelsObject *)type->tp_alloc(type, 0);
    if (self) self->verified_at = -Py_HUGE_VAL;
    return (PyObject *)self;
}

static void top_cache_clear(top_cache_t *tc) {
    Py_CLEAR(tc->asset);
    Py_CLEAR(tc->market);
    Py_CLEAR(tc->token);
    Py_CLEAR(tc->key_prefix);
    PyMem_Free(tc->head);
    PyMem_Free(tc->key);
    tc->head = tc->key = NULL;
    tc->head_n = tc->key_n = 0;
}

static void Levels_dealloc(LevelsObject *self) {
    Py_CLEAR(self->claim);
    Py_CLEAR(self->trade_side);
    Py_CLEAR(self->ts_obj);
    Py_CLEAR(self->hash_obj);
    for (int k = 0; k < 2; k++) {
        side_clear(&self->side[k]);
        PyMem_Free(self->side[k].v);
        PyMem_Free(self->side[k].top);
    }
    top_cache_clear(&self->tc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Text fields (timestamp, hash): `obj`, `n` and `buf` of one of them. */
#define TEXT_FIELD(core, f) &(core)->f##_obj, &(core)->f##_n, (core)->f, (Py_ssize_t)sizeof((core)->f)

/* The scanner's text: inline if it fits, else as a str. 0, or -1 on error (unchanged then). */
static inline int text_put(PyObject **obj, int16_t *n, char *buf, Py_ssize_t cap, const char *p,
                           Py_ssize_t len) {
    if (len <= cap) {
        memcpy(buf, p, (size_t)len);
        *n = (int16_t)len;
        Py_CLEAR(*obj);
        return 0;
    }
    PyObject *s = ascii_str((span_t){p, len});
    if (!s) return -1;
    Py_XSETREF(*obj, s);
    *n = -1;
    return 0;
}

/* A value set from Python: an ASCII str that fits is kept inline too (and as the object). */
static void text_assign(PyObject **obj, int16_t *n, char *buf, Py_ssize_t cap, PyObject *value) {
    *n = -1;
    if (PyUnicode_CheckExact(value) && STR_READY(value) && PyUnicode_IS_ASCII(value) &&
        PyUnicode_GET_LENGTH(value) <= cap) {
        memcpy(buf, PyUnicode_DATA(value), (size_t)PyUnicode_GET_LENGTH(value));
        *n = (int16_t)PyUnicode_GET_LENGTH(value);
    }
    Py_INCREF(value);
    Py_XSETREF(*obj, value);
}

/* The value as an object (a new reference), made from the inline text once and kept. */
static PyObject *text_get(PyObject **obj, int16_t *n, char *buf, Py_ssize_t cap) {
    /* n >= 0 without the object (n < 0 always has it) */
    if (!*obj && !(*obj = ascii_str((span_t){buf, *n > 0 ? *n : 0}))) return NULL;
    Py_INCREF(*obj);
    return *obj;
}

static PyObject *Levels_get_timestamp(LevelsObject *self, void *closure) {
    return text_get(TEXT_FIELD(self, ts));
}

static PyObject *Levels_get_hash(LevelsObject *self, void *closure) {
    return text_get(TEXT_FIELD(self, hash));
}

static int Levels_set_timestamp(LevelsObject *self, PyObject *value, void *closure) {
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "timestamp cannot be deleted");
        return -1;
    }
    text_assign(TEXT_FIELD(self, ts), value);
    return 0;
}

static int Levels_set_hash(LevelsObject *self, PyObject *value, void *closure) {
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "hash cannot be deleted");
        return -1;
    }
    text_assign(TEXT_FIELD(self, hash), value);
    return 0;
}

static int side_arg(PyObject *arg) {
    int r = PyObject_IsTrue(arg);
    return r; /* -1 on error */
}

/* set(is_bid, price, size): OrderBook._set_level (validates its input). */
static PyObject *Levels_set(LevelsObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set(is_bid, price, size)");
        return NULL;
    }
    int bid = side_arg(args[0]);
    if (bid < 0 || check_size(args[2]) < 0) return NULL;
    PyObject *price = canonical_price(args[1]);
    if (!price) return NULL;
    const char *sp = (const char *)PyUnicode_DATA(args[2]);
    Py_ssize_t sn = PyUnicode_GET_LENGTH(args[2]);
    int r = side_set(&self->side[bid], bid, price, sp, sn, args[2],
                     is_zero_size((span_t){sp, sn}));
    Py_DECREF(price);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* load(is_bid, levels: dict[price, size], ascending: list[price]): replace a side with a
 * validated snapshot side (book._snapshot_side's output). */
static PyObject *Levels_load(LevelsObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "load(is_bid, levels: dict, ascending: list)");
        return NULL;
    }
    int bid = side_arg(args[0]);
    if (bid < 0) return NULL;
    side_t fresh = {NULL, 0, 0, NULL, 0, 0, 0, 0};
    Py_ssize_t n = PyList_GET_SIZE(args[2]);
    for (Py_ssize_t i = 0; i < n; i++) {
        /* In the side's order (asks descending): each level is appended at the end. */
        PyObject *price = PyList_GET_ITEM(args[2], bid ? i : n - 1 - i);
        PyObject *size = PyDict_GetItemWithError(args[1], price);
        if (!size) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, price);
            goto fail;
        }
        if (check_size(size) < 0) goto fail;
        PyObject *canon = canonical_price(price);
        if (!canon) goto fail;
        const char *sp = (const char *)PyUnicode_DATA(size);
        int r = side_set(&fresh, bid, canon, sp, PyUnicode_GET_LENGTH(size), size, 0);
        Py_DECREF(canon);
        if (r < 0) goto fail;
    }
    side_t *old = &self->side[bid];
    side_clear(old); /* drops its cached top too (kept allocated for the next one) */
    PyMem_Free(old->v);
    old->v = fresh.v;
    old->n = fresh.n;
    old->cap = fresh.cap;
    Py_RETURN_NONE;
fail:
    side_clear(&fresh);
    PyMem_Free(fresh.v);
    return NULL;
}

/* The i-th level of a side in ascending price order (asks are held descending). */
static inline const level_t *level_asc(const side_t *s, int bid, Py_ssize_t i) {
    return &s->v[bid ? i : s->n - 1 - i];
}

static PyObject *Levels_prices(LevelsObject *self, PyObject *arg) {
    int bid = side_arg(arg);
    if (bid < 0) return NULL;
    side_t *s = &self->side[bid];
    PyObject *out = PyList_New(s->n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        PyObject *price = level_asc(s, bid, i)->price;
        Py_INCREF(price);
        PyList_SET_ITEM(out, i, price);
    }
    return out;
}

static PyObject *Levels_sizes(LevelsObject *self, PyObject *arg) {
    int bid = side_arg(arg);
    if (bid < 0) return NULL;
    side_t *s = &self->side[bid];
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        const level_t *l = level_asc(s, bid, i);
        PyObject *size = level_size_str(l);
        if (!size || PyDict_SetItem(out, l->price, size) < 0) {
            Py_XDECREF(size);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(size);
    }
    return out;
}

static PyObject *Levels_best(LevelsObject *self, PyObject *arg) {
    int bid = side_arg(arg);
    if (bid < 0) return NULL;
    side_t *s = &self->side[bid];
    if (!s->n) Py_RETURN_NONE;
    PyObject *p = s->v[s->n - 1].price;
    Py_INCREF(p);
    return p;
}

static PyObject *Levels_count(LevelsObject *self, PyObject *arg) {
    int bid = side_arg(arg);
    if (bid < 0) return NULL;
    return PyLong_FromSsize_t(self->side[bid].n);
}

/* size(is_bid, price): the size of the level with exactly this spelling, else None. */
static PyObject *Levels_size(LevelsObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "size(is_bid, price)");
        return NULL;
    }
    int bid = side_arg(args[0]);
    if (bid < 0) return NULL;
    PyObject *price = args[1];
    if (!PyUnicode_CheckExact(price) || !PyUnicode_IS_ASCII(price) ||
        !valid_price((span_t){(const char *)PyUnicode_DATA(price), PyUnicode_GET_LENGTH(price)}))
        Py_RETURN_NONE;
    side_t *s = &self->side[bid];
    const char *pp = (const char *)PyUnicode_DATA(price);
    Py_ssize_t pn = PyUnicode_GET_LENGTH(price);
    int64_t key = key_of(pp, pn);
    Py_ssize_t i = side_lower(s, bid, key, pp, pn);
    if (i < s->n && lvl_cmp(&s->v[i], bid, key, pp, pn) == 0) {
        int same = PyUnicode_Compare(s->v[i].price, price);
        if (same == -1 && PyErr_Occurred()) return NULL;
        if (same == 0) return level_size_str(&s->v[i]);
    }
    Py_RETURN_NONE;
}

/* top(is_bid, depth): [[price, size], ...] best-first. */
static PyObject *Levels_top(LevelsObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "top(is_bid, depth)");
        return NULL;
    }
    int bid = side_arg(args[0]);
    if (bid < 0) return NULL;
    Py_ssize_t depth = PyLong_AsSsize_t(args[1]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    side_t *s = &self->side[bid];
    Py_ssize_t count = depth < 0 ? 0 : (depth < s->n ? depth : s->n);
    PyObject *out = PyList_New(count);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        level_t *l = &s->v[s->n - 1 - k];
        PyObject *size = level_size_str(l);
        PyObject *pair = size ? PyList_New(2) : NULL;
        if (!pair) {
            Py_XDECREF(size);
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(l->price);
        PyList_SET_ITEM(pair, 0, l->price);
        PyList_SET_ITEM(pair, 1, size);
        PyList_SET_ITEM(out, k, pair);
    }
    return out;
}

static PyObject *Levels_sizeof(LevelsObject *self, PyObject *unused) {
    size_t n = sizeof(LevelsObject);
    for (int k = 0; k < 2; k++)
        n += sizeof(level_t) * (size_t)self->side[k].cap + (size_t)self->side[k].top_cap;
    if (self->tc.head) n += (size_t)self->tc.head_n;
    if (self->tc.key) n += (size_t)self->tc.key_n;
    return PyLong_FromSize_t(n);
}

static PyMethodDef Levels_methods[] = {
    {"set", (PyCFunction)(void (*)(void))Levels_set, METH_FASTCALL,
     "set(is_bid, price, size): OrderBook._set_level."},
    {"load", (PyCFunction)(void (*)(void))Levels_load, METH_FASTCALL,
     "load(is_bid, levels, ascending): replace one side."},
    {"prices", (PyCFunction)Levels_prices, METH_O, "prices(is_bid): ascending price strs."},
    {"sizes", (PyCFunction)Levels_sizes, METH_O, "sizes(is_bid): {price: size}, ascending."},
    {"best", (PyCFunction)Levels_best, METH_O, "best(is_bid): the best price str or None."},
    {"count", (PyCFunction)Levels_count, METH_O, "count(is_bid): number of levels."},
    {"size", (PyCFunction)(void (*)(void))Levels_size, METH_FASTCALL,
     "size(is_bid, price): the level's size if this exact price string is a level."},
    {"top", (PyCFunction)(void (*)(void))Levels_top, METH_FASTCALL,
     "top(is_bid, depth): [[price, size], ...] best-first."},
    {"__sizeof__", (PyCFunction)Levels_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Levels_getset[] = {
    {"timestamp", (getter)Levels_get_timestamp, (setter)Levels_set_timestamp,
     "The book's timestamp (NativeOrderBook.timestamp).", NULL},
    {"hash", (getter)Levels_get_hash, (setter)Levels_set_hash,
     "The book's last stated hash (NativeOrderBook.hash).", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject Levels_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "marketdata._fastbook.Levels",
    .tp_basicsize = sizeof(LevelsObject),
    .tp_dealloc = (destructor)Levels_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One order book's levels, both sides, held in C (see fastbook.NativeOrderBook), "
              "with its timestamp and hash, and its token's state in a BookKeeper (Tokens).",
    .tp_methods = Levels_methods,
    .tp_getset = Levels_getset,
    .tp_new = Levels_new,
};

/* The Levels of a NativeOrderBook (borrowed), or NULL if `book` is not one. */
static inline LevelsObject *core_of(PyObject *book) {
    if (g_core_offset < 0 || (PyObject *)Py_TYPE(book) != g_native_type) return NULL;
    PyObject *core = *(PyObject **)((char *)book + g_core_offset);
    return core && Py_TYPE(core) == &Levels_Type ? (LevelsObject *)core : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Tokens: a compiled BookKeeper's per-token table                                            */
/*
 * Keyed by the token id's bytes, so that the scanner finds an entry's book without making a
 * str or probing the keeper's dicts; one row per tracked token (BookKeeper._meta), with its
 * NativeOrderBook once it had a snapshot. The token's state the feed, the flush and the
 * claim sweep read lives on the book's Levels (live, fresh, trade side, last check time:
 * mirrored from BookKeeper by `sync`; the pending hash claim and the dirty flag: held there
 * only), so that an entry touches one row, one Levels and its side's array. BookKeeper keeps
 * everything else (meta, resync reasons, bursts, hash checks) in Python and reaches the claims
 * through `claim`/`set_claim`/`claimed`; the dirty tokens are taken by the compiled drains
 * (encode_tops/encode_pack) or `take_dirty`.
 *
 * Open addressing with linear probing, doubled at half full, backward-shift deletion.
 */
typedef struct {
    uint64_t h;          /* hash_bytes of the id's UTF-8 | 1; 0: an empty slot */
    PyObject *asset;     /* the token id (a str, strong) */
    const char *key;     /* its UTF-8 bytes (owned by `asset`) */
    Py_ssize_t key_n;
    PyObject *book;      /* its NativeOrderBook (strong), NULL before the first snapshot */
    LevelsObject *core;  /* the book's Levels (strong), NULL with it */
} tok_t;

typedef struct { /* all strong */
    PyObject *asset, *book;
    LevelsObject *core; /* listed when its dirty flag was set */
} dirty_t;

typedef struct {
    PyObject_HEAD
    tok_t *slots;
    Py_ssize_t n_slots, used;
    dirty_t *dirty;      /* cores whose dirty flag was set, in order (a cleared one is skipped) */
    Py_ssize_t n_dirty, cap_dirty;
    Py_ssize_t claims;   /* cores with a claim */
} TokensObject;

static PyTypeObject Tokens_Type;

/* The first row whose hash and length are those of a token id (its bytes not compared). */
static inline tok_t *tok_probe(TokensObject *T, Py_ssize_t n, uint64_t h) {
    if (!T->n_slots) return NULL;
    size_t mask = (size_t)T->n_slots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        tok_t *t = &T->slots[i];
        if (!t->h) return NULL;
        if (t->h == h && t->key_n == n) return t;
    }
}

static inline tok_t *tok_find(TokensObject *T, const char *p, Py_ssize_t n, uint64_t h) {
    if (!T->n_slots) return NULL;
    size_t mask = (size_t)T->n_slots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        tok_t *t = &T->slots[i];
        if (!t->h) return NULL;
        if (t->h == h && t->key_n == n && memcmp(t->key, p, (size_t)n) == 0) return t;
    }
}

/* The row of a token id given as a str (NULL, with no error set, if it has none). */
static tok_t *tok_find_str(TokensObject *T, PyObject *asset) {
    if (!PyUnicode_Check(asset)) {
        PyErr_SetString(PyExc_TypeError, "token ids must be str");
        return NULL;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(asset, &n);
    if (!p) return NULL;
    return tok_find(T, p, n, hash_bytes(p, n) | 1);
}

/* The row of a tracked token, or NULL with KeyError set. */
static tok_t *tok_get(TokensObject *T, PyObject *asset) {
    tok_t *t = tok_find_str(T, asset);
    if (!t && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, asset);
    return t;
}

static void core_set_claim(TokensObject *T, LevelsObject *core, PyObject *price) {
    if (!core->claim == !price) {
        if (price && core->claim != price) {
            Py_INCREF(price);
            Py_SETREF(core->claim, price);
        }
        return;
    }
    T->claims += price ? 1 : -1;
    Py_XINCREF(price);
    Py_XSETREF(core->claim, price);
}

static int core_mark_dirty(TokensObject *T, tok_t *t) {
    LevelsObject *core = t->core;
    if (core->dirty) return 0;
    if (T->n_dirty == T->cap_dirty) {
        Py_ssize_t cap = T->cap_dirty ? T->cap_dirty * 2 : 256;
        dirty_t *d = PyMem_Realloc(T->dirty, sizeof(dirty_t) * (size_t)cap);
        if (!d) {
            PyErr_NoMemory();
            return -1;
        }
        T->dirty = d;
        T->cap_dirty = cap;
    }
    Py_INCREF(t->asset);
    Py_INCREF(t->book);
    Py_INCREF(core);
    T->dirty[T->n_dirty++] = (dirty_t){t->asset, t->book, core};
    core->dirty = 1;
    return 0;
}

static void dirty_release(dirty_t *v, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_DECREF(v[k].asset);
        Py_DECREF(v[k].book);
        Py_DECREF(v[k].core);
    }
    PyMem_Free(v);
}

/* A row's book goes (untrack, or another book): its Levels no longer speaks for the token. */
static void tok_drop_book(TokensObject *T, tok_t *t) {
    if (t->core) {
        core_set_claim(T, t->core, NULL);
        t->core->dirty = t->core->live = t->core->fresh = 0;
    }
    Py_CLEAR(t->book);
    Py_CLEAR(t->core);
}

static int tokens_grow(TokensObject *T) {
    Py_ssize_t n = T->n_slots ? T->n_slots * 2 : 1024;
    tok_t *slots = PyMem_Calloc((size_t)n, sizeof(tok_t));
    if (!slots) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < T->n_slots; k++) {
        tok_t *t = &T->slots[k];
        if (!t->h) continue;
        size_t i = (size_t)t->h & (size_t)(n - 1);
        while (slots[i].h) i = (i + 1) & (size_t)(n - 1);
        slots[i] = *t;
    }
    PyMem_Free(T->slots);
    T->slots = slots;
    T->n_slots = n;
    return 0;
}

static PyObject *Tokens_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Tokens() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static void Tokens_dealloc(TokensObject *T) {
    for (Py_ssize_t k = 0; k < T->n_slots; k++) {
        if (!T->slots[k].h) continue;
        tok_drop_book(T, &T->slots[k]);
        Py_CLEAR(T->slots[k].asset);
    }
    dirty_release(T->dirty, T->n_dirty);
    PyMem_Free(T->slots);
    Py_TYPE(T)->tp_free((PyObject *)T);
}

/* track(token_id): a row for the token (no-op if it has one). */
static PyObject *Tokens_track(TokensObject *T, PyObject *asset) {
    tok_t *t = tok_find_str(T, asset);
    if (t) Py_RETURN_NONE;
    if (PyErr_Occurred()) return NULL;
    if ((T->used + 1) * 2 > T->n_slots && tokens_grow(T) < 0) return NULL;
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(asset, &n);
    if (!p) return NULL;
    uint64_t h = hash_bytes(p, n) | 1;
    size_t mask = (size_t)T->n_slots - 1, i = (size_t)h & mask;
    while (T->slots[i].h) i = (i + 1) & mask;
    Py_INCREF(asset);
    T->slots[i] = (tok_t){h, asset, p, n, NULL, NULL};
    T->used++;
    Py_RETURN_NONE;
}

/* untrack(token_id): drop its row (no-op if it has none). */
static PyObject *Tokens_untrack(TokensObject *T, PyObject *asset) {
    tok_t *t = tok_find_str(T, asset);
    if (!t) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    tok_drop_book(T, t);
    PyObject *gone = t->asset;
    /* Backward-shift deletion: pull later rows of the probe run into the hole. */
    size_t mask = (size_t)T->n_slots - 1, hole = (size_t)(t - T->slots), i = hole;
    for (;;) {
        i = (i + 1) & mask;
        tok_t *u = &T->slots[i];
        if (!u->h) break;
        size_t home = (size_t)u->h & mask;
        /* u stays if its home lies cyclically in (hole, i] */
        if (hole <= i ? (home > hole && home <= i) : (home > hole || home <= i)) continue;
        T->slots[hole] = *u;
        hole = i;
    }
    memset(&T->slots[hole], 0, sizeof(tok_t));
    T->used--;
    Py_DECREF(gone);
    Py_RETURN_NONE;
}

/* set_book(token_id, book): the NativeOrderBook of a tracked token (its first snapshot). */
static PyObject *Tokens_set_book(TokensObject *T, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_book(token_id, book)");
        return NULL;
    }
    LevelsObject *core = core_of(args[1]);
    if (!core) {
        PyErr_SetString(PyExc_TypeError, "set_book: not a NativeOrderBook");
        return NULL;
    }
    tok_t *t = tok_get(T, args[0]);
    if (!t) return NULL;
    if (t->book == args[1]) Py_RETURN_NONE;
    tok_drop_book(T, t);
    Py_INCREF(args[1]);
    Py_INCREF(core);
    t->book = args[1];
    t->core = core;
    Py_RETURN_NONE;
}

/* sync(token_id, live, fresh, trade_side, verified_at): BookKeeper's view of the token, for
 * the feed, the flush and the claim sweep (no-op for a token without a book). */
static PyObject *Tokens_sync(TokensObject *T, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "sync(token_id, live, fresh, trade_side, verified_at)");
        return NULL;
    }
    double verified_at = PyFloat_AsDouble(args[4]);
    if (verified_at == -1.0 && PyErr_Occurred()) return NULL;
    tok_t *t = tok_find_str(T, args[0]);
    if (!t) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!t->core) Py_RETURN_NONE;
    int live = PyObject_IsTrue(args[1]), fresh = live < 0 ? -1 : PyObject_IsTrue(args[2]);
    if (fresh < 0) return NULL;
    LevelsObject *core = t->core;
    core->live = (uint8_t)live;
    core->fresh = (uint8_t)fresh;
    core->verified_at = verified_at;
    PyObject *side = args[3] == Py_None ? NULL : args[3];
    Py_XINCREF(side);
    Py_XSETREF(core->trade_side, side);
    Py_RETURN_NONE;
}

/* claim(token_id): the token's pending claim (a price), or None. */
static PyObject *Tokens_claim(TokensObject *T, PyObject *asset) {
    tok_t *t = tok_find_str(T, asset);
    if (!t && PyErr_Occurred()) return NULL;
    PyObject *price = t && t->core && t->core->claim ? t->core->claim : Py_None;
    Py_INCREF(price);
    return price;
}

/* set_claim(token_id, price | None) -> the previous claim or None. */
static PyObject *Tokens_set_claim(TokensObject *T, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_claim(token_id, price)");
        return NULL;
    }
    PyObject *price = args[1] == Py_None ? NULL : args[1];
    tok_t *t = tok_find_str(T, args[0]);
    if ((!t || !t->core) && !PyErr_Occurred() && price) /* a claim needs a book */
        PyErr_SetObject(PyExc_KeyError, args[0]);
    if (PyErr_Occurred()) return NULL;
    if (!t || !t->core) Py_RETURN_NONE;
    PyObject *old = t->core->claim ? t->core->claim : Py_None;
    Py_INCREF(old);
    core_set_claim(T, t->core, price);
    return old;
}

/* claimed(due=inf): the tokens with a pending claim whose last check was at or before `due`
 * (BookKeeper's claim sweep: those due a check). */
static PyObject *Tokens_claimed(TokensObject *T, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "claimed(due=inf)");
        return NULL;
    }
    double due = nargs ? PyFloat_AsDouble(args[0]) : Py_HUGE_VAL;
    if (due == -1.0 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t k = 0; out && k < T->n_slots; k++) {
        tok_t *t = &T->slots[k];
        if (t->h && t->core && t->core->claim && t->core->verified_at <= due &&
            PyList_Append(out, t->asset) < 0)
            Py_CLEAR(out);
    }
    return out;
}

static PyObject *Tokens_claim_count(TokensObject *T, PyObject *unused) {
    return PyLong_FromSsize_t(T->claims);
}

/* The tokens of the dirty list whose flag is still set (not untracked since): appended to a
 * list, or added to a set and taken off the list (the drain). */
static int dirty_collect(TokensObject *T, PyObject *into, int take) {
    for (Py_ssize_t k = 0; k < T->n_dirty; k++) {
        dirty_t *d = &T->dirty[k];
        if (!d->core->dirty) continue;
        if ((take ? PySet_Add(into, d->asset) : PyList_Append(into, d->asset)) < 0) return -1;
    }
    if (take) {
        for (Py_ssize_t k = 0; k < T->n_dirty; k++) T->dirty[k].core->dirty = 0;
        dirty_release(T->dirty, T->n_dirty);
        T->dirty = NULL;
        T->n_dirty = T->cap_dirty = 0;
    }
    return 0;
}

/* dirty(): the tokens the compiled feed touched since the last take_dirty. */
static PyObject *Tokens_dirty(TokensObject *T, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out && dirty_collect(T, out, 0) < 0) Py_CLEAR(out);
    return out;
}

/* take_dirty(into: set): move them into the set (the drain). */
static PyObject *Tokens_take_dirty(TokensObject *T, PyObject *into) {
    if (!PySet_Check(into)) {
        PyErr_SetString(PyExc_TypeError, "take_dirty(into: set)");
        return NULL;
    }
    if (dirty_collect(T, into, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

/* state(token_id) -> (has_book, live, fresh, dirty, claim, trade_side, verified_at), for the
 * tests (verified_at None without a book). */
static PyObject *Tokens_state(TokensObject *T, PyObject *asset) {
    tok_t *t = tok_get(T, asset);
    if (!t) return NULL;
    LevelsObject *c = t->core;
    if (!c) return Py_BuildValue("(OOOOOOO)", Py_False, Py_False, Py_False, Py_False, Py_None,
                                 Py_None, Py_None);
    return Py_BuildValue("(OOOOOOd)", Py_True, c->live ? Py_True : Py_False,
                         c->fresh ? Py_True : Py_False, c->dirty ? Py_True : Py_False,
                         c->claim ? c->claim : Py_None, c->trade_side ? c->trade_side : Py_None,
                         c->verified_at);
}

static Py_ssize_t Tokens_len(TokensObject *T) { return T->used; }

static PyMethodDef Tokens_methods[] = {
    {"track", (PyCFunction)Tokens_track, METH_O, "track(token_id): a row for the token."},
    {"untrack", (PyCFunction)Tokens_untrack, METH_O, "untrack(token_id): drop its row."},
    {"set_book", (PyCFunction)(void (*)(void))Tokens_set_book, METH_FASTCALL,
     "set_book(token_id, book): the token's NativeOrderBook."},
    {"sync", (PyCFunction)(void (*)(void))Tokens_sync, METH_FASTCALL,
     "sync(token_id, live, fresh, trade_side, verified_at): the keeper's view of the token."},
    {"claim", (PyCFunction)Tokens_claim, METH_O, "claim(token_id): its pending claim or None."},
    {"set_claim", (PyCFunction)(void (*)(void))Tokens_set_claim, METH_FASTCALL,
     "set_claim(token_id, price | None) -> the previous claim or None."},
    {"claimed", (PyCFunction)(void (*)(void))Tokens_claimed, METH_FASTCALL,
     "claimed(due=inf): tokens with a claim, last checked at or before `due`."},
    {"claim_count", (PyCFunction)Tokens_claim_count, METH_NOARGS, "The number of claims."},
    {"dirty", (PyCFunction)Tokens_dirty, METH_NOARGS, "dirty(): tokens touched in C."},
    {"take_dirty", (PyCFunction)Tokens_take_dirty, METH_O,
     "take_dirty(into: set): move the tokens touched in C into the set."},
    {"state", (PyCFunction)Tokens_state, METH_O,
     "state(token_id) -> (has_book, live, fresh, dirty, claim, trade_side)."},
    {NULL, NULL, 0, NULL}};

static PySequenceMethods Tokens_as_sequence = {.sq_length = (lenfunc)Tokens_len};

static PyTypeObject Tokens_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "marketdata._fastbook.Tokens",
    .tp_basicsize = sizeof(TokensObject),
    .tp_dealloc = (destructor)Tokens_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A compiled BookKeeper's tracked tokens, keyed by the token id's bytes.",
    .tp_methods = Tokens_methods,
    .tp_as_sequence = &Tokens_as_sequence,
    .tp_new = Tokens_new,
};

static int apply_entries(PyObject *keeper, scan_t *sc) {
    int rc = -1;
    PyObject *stats = NULL, *tokens = NULL, *verify = NULL, *ts = NULL, *events = NULL,
             *kd = NULL, *sd = NULL;
    Py_ssize_t applied = 0, untracked = 0, skipped = 0, n_prices = 0;
    kd = PyObject_GenericGetDict(keeper, NULL);
    if (!kd) PyErr_Clear(); /* no instance dict: the attribute protocol below */
    if (!(stats = inst_get(keeper, kd, s_stats))) goto done;
    if (!(tokens = inst_get(keeper, kd, s_tokens))) goto done;
    if (!(verify = inst_get(keeper, kd, s_verify))) goto done;
    sd = PyObject_GenericGetDict(stats, NULL);
    if (!sd) PyErr_Clear();
    if (!(events = inst_get(stats, sd, s_events))) goto done;
    if (Py_TYPE(tokens) != &Tokens_Type || !PyDict_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "_fastbook: unexpected BookKeeper state");
        goto done;
    }
    TokensObject *T = (TokensObject *)tokens;
    int record = PyUnicode_Check(verify) && PyUnicode_Compare(verify, s_flush) == 0;
    int entry_mode = PyUnicode_Check(verify) && PyUnicode_Compare(verify, s_entry) == 0;
    if (PyErr_Occurred()) goto done;
    if (add_attr(stats, sd, s_frames, 1) < 0) goto done;
    if (dict_incr(events, s_price_change) < 0) goto done;

    /* Registering a new price happens in validation in the Python path too; it may run
     * Python code, so every price comes before any row is looked up. */
    for (; n_prices < sc->count; n_prices++) {
        entry_t *e = &sc->entries[n_prices];
        if (!(e->price_obj = price_str(e->price))) goto release;
    }
    /* The rows, looked up for every entry before any is applied, each lookup's memory (the
     * table slot, then the token id and the book's Levels) fetched ahead while the others'
     * are: an entry's book is rarely in the CPU cache, and its misses now overlap. */
    for (Py_ssize_t i = 0; i < sc->count; i++) {
        entry_t *e = &sc->entries[i];
        e->h = hash_bytes(e->asset.p, e->asset.n) | 1;
        if (T->n_slots) __builtin_prefetch(&T->slots[e->h & (uint64_t)(T->n_slots - 1)]);
    }
    for (Py_ssize_t i = 0; i < sc->count; i++) {
        entry_t *e = &sc->entries[i];
        tok_t *t = tok_probe(T, e->asset.n, e->h);
        e->row = t;
        if (t) {
            __builtin_prefetch(t->key);
            __builtin_prefetch(t->key + t->key_n - 1);
            if (t->core) {
                __builtin_prefetch(t->core);
                __builtin_prefetch((char *)t->core + 64);
                __builtin_prefetch(&t->core->side[e->is_bid]);
            }
        }
    }
    int python_ran = 0; /* the rows looked up above may have moved since */
    for (Py_ssize_t i = 0; i < sc->count; i++) {
        entry_t *e = &sc->entries[i];
        PyObject *price = e->price_obj;
        tok_t *t = e->row;
        if (python_ran || !t || memcmp(t->key, e->asset.p, (size_t)e->asset.n) != 0)
            t = tok_find(T, e->asset.p, e->asset.n, e->h);
        LevelsObject *core = t ? t->core : NULL;
        if (!core || !core->live) {
            if (t)
                skipped++;
            else
                untracked++;
            continue;
        }
        int ok = side_set(&core->side[e->is_bid], e->is_bid, price, e->size.p, e->size.n, NULL,
                          is_zero_size(e->size)) == 0 &&
                 text_put(TEXT_FIELD(core, ts), sc->ts.p, sc->ts.n) == 0 &&
                 core_mark_dirty(T, t) == 0 &&
                 (e->has_hash ? text_put(TEXT_FIELD(core, hash), e->hash.p, e->hash.n)
                              : text_put(TEXT_FIELD(core, hash), "", 0)) == 0;
        if (ok) {
            applied++;
            if (record) {
                core_set_claim(T, core, e->has_hash ? price : NULL);
            } else if (entry_mode && e->has_hash) {
                /* Python code: `t` and `core` may not be valid after it. */
                PyObject *asset = t->asset, *book = t->book, *hash = ascii_str(e->hash);
                Py_INCREF(asset);
                Py_INCREF(book);
                if (!ts) ts = ascii_str(sc->ts);
                PyObject *r = hash && ts ? PyObject_CallMethodObjArgs(keeper, s_verify_m, asset,
                                                                      book, hash, ts, price, NULL)
                                         : NULL;
                python_ran = 1;
                ok = r != NULL;
                Py_XDECREF(r);
                Py_XDECREF(hash);
                Py_DECREF(asset);
                Py_DECREF(book);
            }
        }
        if (!ok) goto release;
    }
    /* Like the Python loop: the counts are added once the whole frame went through. */
    if (add_attr(stats, sd, s_entries_skipped_resync, skipped) < 0 ||
        add_attr(stats, sd, s_entries_untracked, untracked) < 0 ||
        add_attr(stats, sd, s_entries_applied, applied) < 0)
        goto release;
    rc = 0;
release:
    for (Py_ssize_t i = 0; i < n_prices; i++) Py_DECREF(sc->entries[i].price_obj);
done:
    Py_XDECREF(stats);
    Py_XDECREF(tokens);
    Py_XDECREF(verify);
    Py_XDECREF(events);
    Py_XDECREF(ts);
    Py_XDECREF(kd);
    Py_XDECREF(sd);
    return rc;
}

static PyObject *feed_price_change(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed_price_change(keeper, raw)");
        return NULL;
    }
    PyObject *keeper = args[0], *raw = args[1];
    if (!g_price_strs) {
        PyErr_SetString(PyExc_RuntimeError, "_fastbook.bind() was not called");
        return NULL;
    }
    const char *data;
    Py_ssize_t n;
    if (PyBytes_CheckExact(raw)) {
        data = PyBytes_AS_STRING(raw);
        n = PyBytes_GET_SIZE(raw);
    } else if (PyUnicode_CheckExact(raw) && STR_READY(raw) && PyUnicode_IS_ASCII(raw)) {
        data = (const char *)PyUnicode_DATA(raw);
        n = PyUnicode_GET_LENGTH(raw);
    } else {
        Py_RETURN_FALSE;
    }
    scan_t sc;
    sc.s = data;
    sc.end = data + n;
    sc.entries = sc.small;
    sc.count = 0;
    sc.cap = (Py_ssize_t)(sizeof(sc.small) / sizeof(sc.small[0]));
    sc.ts.p = NULL;
    sc.ts.n = 0;
    PyObject *result;
    if (!scan_frame(&sc)) {
        result = Py_False;
        Py_INCREF(result);
    } else if (apply_entries(keeper, &sc) < 0) {
        result = NULL;
    } else {
        result = Py_True;
        Py_INCREF(result);
    }
    if (sc.entries != sc.small) PyMem_Free(sc.entries);
    return result;
}

/* ---------------------------------------------------------------------------------------- */
/* encode_top and hash_text                                                                   */

/* Pointers to the level dict and sorted price list of one side, checked. */
static int side_of(PyObject *book, int bid, PyObject **levels, PyObject **order) {
    *levels = book_get(book, bid ? F_BIDS : F_ASKS);
    if (!*levels) return -1;
    *order = book_get(book, bid ? F_BID_PX : F_ASK_PX);
    if (!*order) {
        Py_CLEAR(*levels);
        return -1;
    }
    if (!PyDict_Check(*levels) || !PyList_Check(*order)) {
        Py_CLEAR(*levels);
        Py_CLEAR(*order);
        PyErr_SetString(PyExc_TypeError, "_fastbook: unexpected OrderBook state");
        return -1;
    }
    return 0;
}

/* One level as the bus writes it (["p","s"]) or as the hash recipe does. */
static int put_level(buf_t *b, PyObject *levels, PyObject *price, int for_hash) {
    PyObject *size = PyDict_GetItemWithError(levels, price);
    if (!size) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, price);
        return -1;
    }
    if (for_hash) {
        /* Prices and sizes are validated plain ASCII decimals: spliced as is (book.py). */
        if (BUF_LIT(b, "{\"price\":") < 0 || buf_json_str(b, price) < 0 ||
            BUF_LIT(b, ",\"size\":") < 0 || buf_json_str(b, size) < 0 || BUF_LIT(b, "}") < 0)
            return -1;
        return 0;
    }
    if (BUF_LIT(b, "[") < 0 || buf_json_str(b, price) < 0 || BUF_LIT(b, ",") < 0 ||
        buf_json_str(b, size) < 0 || BUF_LIT(b, "]") < 0)
        return -1;
    return 0;
}

/* Levels of one side from `order`, indices [start, stop) stepping by `step`. */
static int put_side(buf_t *b, PyObject *levels, PyObject *order, Py_ssize_t start,
                    Py_ssize_t count, int step, int for_hash) {
    if (BUF_LIT(b, "[") < 0) return -1;
    for (Py_ssize_t k = 0; k < count; k++) {
        if (k && BUF_LIT(b, ",") < 0) return -1;
        if (put_level(b, levels, PyList_GET_ITEM(order, start + k * step), for_hash) < 0)
            return -1;
    }
    return BUF_LIT(b, "]");
}

/* The same from a C-held side. */
static int put_core_side(buf_t *b, const side_t *s, Py_ssize_t start, Py_ssize_t count, int step,
                         int for_hash) {
    /* Prices and sizes in a Levels are validated plain ASCII decimals: no escaping. */
    if (BUF_LIT(b, "[") < 0) return -1;
    for (Py_ssize_t k = 0; k < count; k++) {
        const level_t *l = &s->v[start + k * step];
        const char *sp, *pp = (const char *)PyUnicode_DATA(l->price);
        Py_ssize_t sn, pn = PyUnicode_GET_LENGTH(l->price);
        level_size_text(l, &sp, &sn);
        if (buf_reserve(b, pn + sn + 24) < 0) return -1;
        char *o = b->p + b->n;
        if (k) *o++ = ',';
        if (for_hash) {
            memcpy(o, "{\"price\":\"", 10);
            o += 10;
        } else {
            memcpy(o, "[\"", 2);
            o += 2;
        }
        memcpy(o, pp, (size_t)pn);
        o += pn;
        if (for_hash) {
            memcpy(o, "\",\"size\":\"", 10);
            o += 10;
        } else {
            memcpy(o, "\",\"", 3);
            o += 3;
        }
        memcpy(o, sp, (size_t)sn);
        o += sn;
        if (for_hash) {
            memcpy(o, "\"}", 2);
            o += 2;
        } else {
            memcpy(o, "\"]", 2);
            o += 2;
        }
        b->n = o - b->p;
    }
    return BUF_LIT(b, "]");
}

static inline int put_key_str_n(buf_t *b, const char *key, Py_ssize_t n, PyObject *value) {
    if (buf_put(b, key, n) < 0) return -1;
    return buf_json_str(b, value);
}
/* ,"key":<value as JSON> (`key` a string literal) */
#define put_key_str(b, key, value) put_key_str_n((b), (key), (Py_ssize_t)(sizeof(key) - 1), (value))

/* ,"key":"<price>" for a price held in a Levels (validated plain decimal: nothing to escape). */
static inline int put_key_price_n(buf_t *b, const char *key, Py_ssize_t n, PyObject *price) {
    if (price == Py_None) return put_key_str_n(b, key, n, price);
    Py_ssize_t pn = PyUnicode_GET_LENGTH(price);
    if (buf_reserve(b, n + pn + 2) < 0) return -1;
    char *o = b->p + b->n;
    memcpy(o, key, (size_t)n);
    o[n] = '"';
    memcpy(o + n + 1, PyUnicode_DATA(price), (size_t)pn);
    o[n + 1 + pn] = '"';
    b->n += n + pn + 2;
    return 0;
}
#define put_key_price(b, key, price) \
    put_key_price_n((b), (key), (Py_ssize_t)(sizeof(key) - 1), (price))

/* A text field of a book (F_TIMESTAMP or F_HASH): *p and *n when it is ASCII text (a
 * NativeOrderBook's inline text, or an ASCII str), with *obj = the str or NULL; else *obj = the
 * value (None or a str). A new reference in *obj; -1 on error (any other type is one). */
static PyObject *str_attr(PyObject *book, int f);
static int book_text(PyObject *book, LevelsObject *core, int f, const char **p, Py_ssize_t *n,
                     PyObject **obj) {
    *p = NULL;
    *n = 0;
    *obj = NULL;
    if (core && (f == F_TIMESTAMP ? core->ts_n : core->hash_n) >= 0) {
        *p = f == F_TIMESTAMP ? core->ts : core->hash;
        *n = f == F_TIMESTAMP ? core->ts_n : core->hash_n;
        return 0;
    }
    *obj = core ? (f == F_TIMESTAMP ? text_get(TEXT_FIELD(core, ts)) : text_get(TEXT_FIELD(core, hash)))
                : str_attr(book, f);
    if (!*obj) return -1;
    if (*obj != Py_None && !PyUnicode_Check(*obj)) {
        PyErr_Format(PyExc_TypeError, "_fastbook: OrderBook.%U is not a str", *g_field_names[f]);
        Py_CLEAR(*obj);
        return -1;
    }
    if (PyUnicode_Check(*obj) && PyUnicode_IS_ASCII(*obj)) {
        *p = (const char *)PyUnicode_DATA(*obj);
        *n = PyUnicode_GET_LENGTH(*obj);
    }
    return 0;
}

/* str field, or None; anything else is an error (the caller falls back). */
static PyObject *str_attr(PyObject *book, int f) {
    PyObject *v = book_get(book, f);
    if (v && v != Py_None && !PyUnicode_Check(v)) {
        Py_DECREF(v);
        PyErr_Format(PyExc_TypeError, "_fastbook: OrderBook.%U is not a str", *g_field_names[f]);
        return NULL;
    }
    return v;
}

/* A non-negative fixed-point value v / 10^places as bus._fmt writes a Decimal: plain
 * notation, no trailing zeros after the point, no lone point. */
static int buf_fixed(buf_t *b, uint64_t v, int places, int negative) {
    char digits[48];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n <= places) digits[n++] = '0'; /* at least one digit before the point */
    int first = 0;                         /* index of the lowest digit kept */
    while (first < places && digits[first] == '0') first++;
    if (buf_reserve(b, n + 4) < 0) return -1;
    b->p[b->n++] = '"';
    if (negative) b->p[b->n++] = '-';
    for (int i = n - 1; i >= places; i--) b->p[b->n++] = digits[i];
    if (first < places) {
        b->p[b->n++] = '.';
        for (int i = places - 1; i >= first; i--) b->p[b->n++] = digits[i];
    }
    b->p[b->n++] = '"';
    return 0;
}

/* ,"mid":..,"spread":.. for best bid and ask (bus.mid_spread: exact (b + a) / 2 and a - b);
 * 0 if a price has more than 18 decimals (the caller asks bus.mid_spread instead). */
static int put_mid_spread(buf_t *b, PyObject *bid, PyObject *ask) {
    int64_t kb, ka;
    if (!price_key(bid, &kb) || !price_key(ask, &ka)) return 0;
    if (BUF_LIT(b, ",\"mid\":") < 0) return -1;
    /* (kb + ka) / 2 at 1e-18 is (kb + ka) * 5 at 1e-19; <= 1e19 fits in 64 unsigned bits. */
    if (buf_fixed(b, ((uint64_t)kb + (uint64_t)ka) * 5u, 19, 0) < 0) return -1;
    if (BUF_LIT(b, ",\"spread\":") < 0) return -1;
    int64_t d = ka - kb;
    if (d == 0) return BUF_LIT(b, "\"0\"") < 0 ? -1 : 1;
    return buf_fixed(b, (uint64_t)(d < 0 ? -d : d), 18, d < 0) < 0 ? -1 : 1;
}

/* Decimal digits of v >= 0 (no snprintf: it costs more than the rest of a small field). */
static int buf_uint(buf_t *b, unsigned long long v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return buf_put(b, tmp + sizeof tmp - n, n);
}

/* A RESP length line: <lead><n>\r\n (lead '$' for a bulk string, '*' for an array). */
static int put_resp_len(buf_t *b, char lead, Py_ssize_t n) {
    char tmp[24];
    int k = 0;
    size_t v = (size_t)n;
    tmp[sizeof tmp - 1 - k++] = '\n';
    tmp[sizeof tmp - 1 - k++] = '\r';
    do {
        tmp[sizeof tmp - 1 - k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    tmp[sizeof tmp - 1 - k++] = lead;
    return buf_put(b, tmp + sizeof tmp - k, k);
}

/* A cached byte string: replace *dst with the n bytes at p. */
static int cache_bytes(char **dst, Py_ssize_t *dst_n, const char *p, Py_ssize_t n) {
    char *c = PyMem_Realloc(*dst, (size_t)(n ? n : 1));
    if (!c) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(c, p, (size_t)n);
    *dst = c;
    *dst_n = n;
    return 0;
}

/* Point a cache's key reference at `obj` (a new strong reference; the old one dropped). */
static inline void cache_ref(PyObject **slot, PyObject *obj) {
    Py_INCREF(obj);
    Py_XSETREF(*slot, obj);
}

/* ,"mid":..,"spread":.. by (best bid, best ask) str objects: the same few pairs recur all
 * day (bus.mid_spread caches them in Python too). Direct-mapped; each slot holds strong
 * references to its pair, so an identical pointer is the identical (immutable) text. */
#define MS_SLOTS 4096
typedef struct {
    PyObject *bid, *ask;
    uint8_t n; /* 0: empty */
    char text[47];
} ms_slot_t;
static ms_slot_t g_ms[MS_SLOTS];

static inline ms_slot_t *ms_slot(PyObject *bid, PyObject *ask) {
    uint64_t h = ((uint64_t)(uintptr_t)bid >> 4) * 0x9E3779B97F4A7C15ULL ^
                 ((uint64_t)(uintptr_t)ask >> 4);
    return &g_ms[(h ^ (h >> 29)) & (MS_SLOTS - 1)];
}

/* The best `count` levels of a C-held side as the bus writes them, from the side's cached
 * copy when nothing among them changed since it was made (side_touched). */
static int put_core_top(buf_t *b, side_t *s, Py_ssize_t depth) {
    if (s->top_valid && s->top_depth == depth) return buf_put(b, s->top, s->top_n);
    Py_ssize_t count = s->n < depth ? s->n : depth, start = b->n;
    if (put_core_side(b, s, s->n - 1, count, -1, 0) < 0) return -1;
    Py_ssize_t n = b->n - start;
    if (n > s->top_cap) {
        char *c = PyMem_Realloc(s->top, (size_t)n);
        if (!c) {
            PyErr_NoMemory();
            return -1;
        }
        s->top = c;
        s->top_cap = n;
    }
    memcpy(s->top, b->p + start, (size_t)n);
    s->top_n = n;
    s->top_depth = depth;
    s->top_valid = 1;
    return 0;
}

/* bus.encode_top's bytes for `book`, appended to `b`: 1 written, 0 a field needs the Python
 * encoder (nothing written then), -1 error. `pa` is published_at's text. A NativeOrderBook's
 * invariant parts come from its Levels' caches (top_cache_t, the sides' cached tops). */
static int encode_top_into(buf_t *b, PyObject *book, PyObject *fresh, PyObject *lts,
                           Py_ssize_t depth, const char *pa, Py_ssize_t pan,
                           PyObject *mid_spread) {
    if (depth < 0) depth = 0;
    PyObject *bids = NULL, *bid_px = NULL, *asks = NULL, *ask_px = NULL, *asset = NULL,
             *market = NULL, *ltp = NULL, *tick = NULL, *ts = NULL, *hash = NULL, *ms = NULL;
    int rc = -1;
    Py_ssize_t start = b->n;
    buf_t tail; /* mid and spread, written after best_ask */
    buf_init(&tail);
    LevelsObject *core = core_of(book);
    if (!core && (side_of(book, 1, &bids, &bid_px) < 0 || side_of(book, 0, &asks, &ask_px) < 0))
        goto done;
    const char *tsp, *hp; /* the timestamp's and the hash's text, when ASCII */
    Py_ssize_t tsn, hn;
    if (!(asset = str_attr(book, F_ASSET_ID)) || !(market = str_attr(book, F_MARKET)) ||
        !(ltp = str_attr(book, F_LAST_TRADE_PRICE)) || !(tick = str_attr(book, F_TICK_SIZE)) ||
        book_text(book, core, F_TIMESTAMP, &tsp, &tsn, &ts) < 0 ||
        book_text(book, core, F_HASH, &hp, &hn, &hash) < 0)
        goto done;
    if (ts == Py_None || asset == Py_None || market == Py_None || hash == Py_None) {
        rc = 0; /* not a shape we encode: the Python encoder decides */
        goto done;
    }
    /* timestamp_ms: bus.timestamp_ms(ts), null beyond 18 significant digits */
    long long ts_ms = -1;
    {
        Py_ssize_t n = tsn;
        if (tsp && n > 0) {
            const char *p = tsp;
            Py_ssize_t i = 0;
            for (; i < n && p[i] >= '0' && p[i] <= '9'; i++)
                ;
            if (i == n) {
                Py_ssize_t z = 0;
                while (z < n - 1 && p[z] == '0') z++;
                if (n - z <= 18) { /* longer: not a time, published as null */
                    ts_ms = 0;
                    for (i = z; i < n; i++) ts_ms = ts_ms * 10 + (p[i] - '0');
                }
            }
        }
    }
    Py_ssize_t nb = core ? core->side[1].n : PyList_GET_SIZE(bid_px);
    Py_ssize_t na = core ? core->side[0].n : PyList_GET_SIZE(ask_px);
    PyObject *best_bid = !nb ? Py_None
                         : core ? core->side[1].v[nb - 1].price
                                : PyList_GET_ITEM(bid_px, nb - 1);
    PyObject *best_ask = !na ? Py_None : core ? core->side[0].v[na - 1].price : PyList_GET_ITEM(ask_px, 0);
    PyObject *mid = Py_None, *spread = Py_None;
    int mid_done = 0;
    top_cache_t *tc = core ? &core->tc : NULL;
    if (nb && na) {
        ms_slot_t *slot = ms_slot(best_bid, best_ask);
        if (slot->n && slot->bid == best_bid && slot->ask == best_ask) {
            if (buf_put(&tail, slot->text, slot->n) < 0) goto done;
            mid_done = 1;
        } else {
            mid_done = put_mid_spread(&tail, best_bid, best_ask);
            if (mid_done < 0) goto done;
            if (mid_done && tail.n <= (Py_ssize_t)sizeof slot->text) {
                memcpy(slot->text, tail.p, (size_t)tail.n);
                slot->n = (uint8_t)tail.n;
                cache_ref(&slot->bid, best_bid);
                cache_ref(&slot->ask, best_ask);
            }
        }
    }
    if (nb && na && !mid_done) {
        ms = PyObject_CallFunctionObjArgs(mid_spread, best_bid, best_ask, NULL);
        if (!ms) goto done;
        if (!PyTuple_Check(ms) || PyTuple_GET_SIZE(ms) != 2) {
            PyErr_SetString(PyExc_TypeError, "mid_spread must return a pair");
            goto done;
        }
        mid = PyTuple_GET_ITEM(ms, 0);
        spread = PyTuple_GET_ITEM(ms, 1);
    }
    int ltp_empty = ltp == Py_None || PyUnicode_GET_LENGTH(ltp) == 0;
    if (tc && tc->head && tc->asset == asset && tc->market == market) {
        if (buf_put(b, tc->head, tc->head_n) < 0) goto done;
    } else {
        Py_ssize_t h = b->n;
        if (put_key_str(b, "{\"token_id\":", asset) < 0 ||
            put_key_str(b, ",\"market\":", market) < 0)
            goto done;
        if (tc) {
            if (cache_bytes(&tc->head, &tc->head_n, b->p + h, b->n - h) < 0) goto done;
            cache_ref(&tc->asset, asset);
            cache_ref(&tc->market, market);
        }
    }
    if ((core ? put_key_price(b, ",\"best_bid\":", best_bid)
              : put_key_str(b, ",\"best_bid\":", best_bid)) < 0 ||
        (core ? put_key_price(b, ",\"best_ask\":", best_ask)
              : put_key_str(b, ",\"best_ask\":", best_ask)) < 0 ||
        (mid_done ? buf_put(b, tail.p, tail.n)
                  : (put_key_str(b, ",\"mid\":", mid) < 0 ? -1
                                                          : put_key_str(b, ",\"spread\":", spread))) < 0 ||
        put_key_str(b, ",\"last_trade_price\":", ltp_empty ? Py_None : ltp) < 0 ||
        put_key_str(b, ",\"last_trade_side\":", lts) < 0 ||
        put_key_str(b, ",\"tick_size\":", tick) < 0 || BUF_LIT(b, ",\"timestamp_ms\":") < 0)
        goto done;
    if ((ts_ms < 0 ? BUF_LIT(b, "null") : buf_uint(b, (unsigned long long)ts_ms)) < 0) goto done;
    if (BUF_LIT(b, ",\"hash\":") < 0 || (hp ? buf_json_ascii(b, hp, hn) : buf_json_str(b, hash)) < 0)
        goto done;
    int is_fresh = PyObject_IsTrue(fresh);
    if (is_fresh < 0) goto done;
    if ((is_fresh ? BUF_LIT(b, ",\"fresh\":true") : BUF_LIT(b, ",\"fresh\":false")) < 0)
        goto done;
    if (BUF_LIT(b, ",\"bids\":") < 0 ||
        (core ? put_core_top(b, &core->side[1], depth)
              : put_side(b, bids, bid_px, nb - 1, nb < depth ? nb : depth, -1, 0)) < 0 ||
        BUF_LIT(b, ",\"asks\":") < 0 ||
        (core ? put_core_top(b, &core->side[0], depth)
              : put_side(b, asks, ask_px, 0, na < depth ? na : depth, 1, 0)) < 0 ||
        BUF_LIT(b, ",\"published_at\":") < 0 || buf_put(b, pa, pan) < 0 || BUF_LIT(b, "}") < 0)
        goto done;
    rc = 1;
done:
    if (rc != 1) b->n = start; /* nothing half-written */
    buf_free(&tail);
    Py_XDECREF(bids);
    Py_XDECREF(bid_px);
    Py_XDECREF(asks);
    Py_XDECREF(ask_px);
    Py_XDECREF(asset);
    Py_XDECREF(market);
    Py_XDECREF(ltp);
    Py_XDECREF(tick);
    Py_XDECREF(ts);
    Py_XDECREF(hash);
    Py_XDECREF(ms);
    return rc;
}

/* published_at's text (an int as orjson writes it). */
static Py_ssize_t int_text(char *out, long long v) {
    return (Py_ssize_t)snprintf(out, 32, "%lld", v);
}

/* encode_top's result: the bytes, or None when a field needs the Python encoder. */
static PyObject *encode_top_impl(PyObject *book, PyObject *fresh, PyObject *lts, Py_ssize_t depth,
                                 long long published_at, PyObject *mid_spread) {
    char pa[32];
    Py_ssize_t pan = int_text(pa, published_at);
    buf_t b;
    buf_init(&b);
    PyObject *result = NULL;
    int r = encode_top_into(&b, book, fresh, lts, depth, pa, pan, mid_spread);
    if (r > 0)
        result = PyBytes_FromStringAndSize(b.p, b.n);
    else if (r == 0)
        result = Py_NewRef(Py_None);
    buf_free(&b);
    return result;
}

static PyObject *encode_top(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_top(book, fresh, last_trade_side, depth, published_at, "
                        "mid_spread)");
        return NULL;
    }
    Py_ssize_t depth = PyLong_AsSsize_t(args[3]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    long long published_at = PyLong_AsLongLong(args[4]);
    if (published_at == -1 && PyErr_Occurred()) return NULL;
    return encode_top_impl(args[0], args[1], args[2], depth, published_at, args[5]);
}

static PyObject *hash_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "hash_text(book, timestamp, last_trade_price)");
        return NULL;
    }
    PyObject *book = args[0], *ts = args[1], *ltp = args[2];
    PyObject *bids = NULL, *bid_px = NULL, *asks = NULL, *ask_px = NULL, *asset = NULL,
             *market = NULL, *tick = NULL, *mos = NULL, *neg = NULL, *result = NULL;
    buf_t b;
    buf_init(&b);
    LevelsObject *core = core_of(book);
    if (!core && (side_of(book, 1, &bids, &bid_px) < 0 || side_of(book, 0, &asks, &ask_px) < 0))
        goto done;
    if (!(asset = book_get(book, F_ASSET_ID)) ||
        !(market = book_get(book, F_MARKET)) ||
        !(tick = book_get(book, F_TICK_SIZE)) ||
        !(mos = book_get(book, F_MIN_ORDER_SIZE)) ||
        !(neg = book_get(book, F_NEG_RISK)))
        goto done;
    Py_ssize_t nb = core ? core->side[1].n : PyList_GET_SIZE(bid_px);
    Py_ssize_t na = core ? core->side[0].n : PyList_GET_SIZE(ask_px);
    int neg_true = PyObject_IsTrue(neg);
    if (neg_true < 0) goto done;
    if (put_key_str(&b, "{\"market\":", market) < 0 ||
        put_key_str(&b, ",\"asset_id\":", asset) < 0 ||
        put_key_str(&b, ",\"timestamp\":", ts) < 0 ||
        BUF_LIT(&b, ",\"hash\":\"\",\"bids\":") < 0 ||
        (core ? put_core_side(&b, &core->side[1], 0, nb, 1, 1)
              : put_side(&b, bids, bid_px, 0, nb, 1, 1)) < 0 ||
        BUF_LIT(&b, ",\"asks\":") < 0 ||
        (core ? put_core_side(&b, &core->side[0], 0, na, 1, 1) /* held descending */
              : put_side(&b, asks, ask_px, na - 1, na, -1, 1)) < 0 ||
        put_key_str(&b, ",\"min_order_size\":", mos) < 0 ||
        put_key_str(&b, ",\"tick_size\":", tick) < 0 ||
        (neg_true ? BUF_LIT(&b, ",\"neg_risk\":true") : BUF_LIT(&b, ",\"neg_risk\":false")) < 0 ||
        put_key_str(&b, ",\"last_trade_price\":", ltp) < 0 || BUF_LIT(&b, "}") < 0)
        goto done;
    result = PyBytes_FromStringAndSize(b.p, b.n);
done:
    buf_free(&b);
    Py_XDECREF(bids);
    Py_XDECREF(bid_px);
    Py_XDECREF(asks);
    Py_XDECREF(ask_px);
    Py_XDECREF(asset);
    Py_XDECREF(market);
    Py_XDECREF(tick);
    Py_XDECREF(mos);
    Py_XDECREF(neg);
    return result;
}

/* ---------------------------------------------------------------------------------------- */

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bind(price_strs, parse_price, orjson_dumps, OrderBook)");
        return NULL;
    }
    if (bind_book_type(args[3]) < 0) return NULL;
    if (!PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "price_strs must be a dict");
        return NULL;
    }
    table_clear();
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    Py_XSETREF(g_price_strs, args[0]);
    Py_XSETREF(g_parse_price, args[1]);
    Py_XSETREF(g_dumps, args[2]);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* encode_tops and pack_publish: the flush, per token touched                                 */

/* What a token's top needs: its book and from the book's Levels whether it is published fresh
 * and the side of its last trade (None when it has none). */
static void top_of(PyObject *book, LevelsObject *core, PyObject **out_book, PyObject **fresh,
                   PyObject **side) {
    *out_book = Py_NewRef(book);
    *fresh = core->fresh ? Py_True : Py_False;
    *side = Py_NewRef(core->trade_side ? core->trade_side : Py_None);
}

/* The tokens a flush publishes: those given (BookKeeper._dirty, marked by Python code), then
 * those of the table's dirty list (marked by the compiled feed) not among them. The list is
 * taken at the start (marks made meanwhile go to a new one), and every token of it is taken,
 * published or not (as Python's drain swaps its set out first). */
typedef struct {
    PyObject *it, *seen; /* over the tokens given; seen: to refuse repeats, or NULL */
    TokensObject *T;
    dirty_t *v;          /* the dirty list taken */
    Py_ssize_t n, k;
} tops_iter_t;

/* 0, or -1 with nothing taken. */
static int tops_begin(tops_iter_t *ti, PyObject *tokens, TokensObject *T, int distinct) {
    ti->seen = NULL;
    if (!(ti->it = PyObject_GetIter(tokens))) return -1;
    if (distinct && !PyAnySet_Check(tokens) && !(ti->seen = PySet_New(NULL))) {
        Py_CLEAR(ti->it);
        return -1;
    }
    ti->T = T;
    ti->v = T->dirty;
    ti->n = T->n_dirty;
    ti->k = 0;
    T->dirty = NULL;
    T->n_dirty = T->cap_dirty = 0;
    return 0;
}

/* The next token with a book: 1 with new references in *token, *book, *side (and *fresh), 0
 * when there are no more, -1 on error. */
static int tops_next(tops_iter_t *ti, PyObject **token, PyObject **book, PyObject **fresh,
                     PyObject **side) {
    PyObject *t;
    while (ti->it && (t = PyIter_Next(ti->it))) {
        int dup = 0;
        if (!PyUnicode_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "token ids must be str");
        } else if (ti->seen && (dup = PySet_Contains(ti->seen, t)) == 0) {
            dup = PySet_Add(ti->seen, t);
        } else if (dup > 0) {
            PyErr_SetString(PyExc_ValueError, "tokens must be distinct");
        }
        tok_t *row = PyErr_Occurred() ? NULL : tok_find_str(ti->T, t);
        if (PyErr_Occurred()) {
            Py_DECREF(t);
            return -1;
        }
        if (row && row->book) {
            row->core->dirty = 0; /* published now: not again from the dirty list */
            *token = t;
            top_of(row->book, row->core, book, fresh, side);
            return 1;
        }
        Py_DECREF(t);
    }
    if (ti->it) {
        if (PyErr_Occurred()) return -1;
        Py_CLEAR(ti->it);
    }
    while (ti->k < ti->n) {
        dirty_t *d = &ti->v[ti->k++];
        if (!d->core->dirty) continue; /* published above, or untracked since */
        d->core->dirty = 0;
        *token = Py_NewRef(d->asset);
        top_of(d->book, d->core, book, fresh, side);
        return 1;
    }
    return 0;
}

static void tops_end(tops_iter_t *ti) {
    for (Py_ssize_t j = ti->k; j < ti->n; j++) ti->v[j].core->dirty = 0; /* taken all the same */
    dirty_release(ti->v, ti->n);
    Py_CLEAR(ti->it);
    Py_CLEAR(ti->seen);
}

static TokensObject *tokens_arg(PyObject *arg) {
    if (Py_TYPE(arg) != &Tokens_Type) {
        PyErr_SetString(PyExc_TypeError, "expected a _fastbook.Tokens");
        return NULL;
    }
    return (TokensObject *)arg;
}

/* encode_tops(tokens, table, depth, published_at, mid_spread, fallback)
 * -> [(token_id, top JSON), ...]: BookKeeper.drain_tops_json's loop over `tokens` and the
 * table's dirty tokens (tops_iter_t; those without a book are skipped). `fallback(book, fresh,
 * last_trade_side, depth, published_at)` encodes what encode_top leaves to Python. */
static PyObject *encode_tops(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "encode_tops(tokens, table, depth, published_at, "
                                         "mid_spread, fallback)");
        return NULL;
    }
    PyObject *tokens = args[0], *mid_spread = args[4], *fallback = args[5];
    TokensObject *T = tokens_arg(args[1]);
    if (!T) return NULL;
    Py_ssize_t depth = PyLong_AsSsize_t(args[2]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    long long published_at = PyLong_AsLongLong(args[3]);
    if (published_at == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0), *token, *book, *f, *side;
    if (!out) return NULL;
    tops_iter_t ti;
    if (tops_begin(&ti, tokens, T, 0) < 0) goto fail;
    int more;
    while ((more = tops_next(&ti, &token, &book, &f, &side)) > 0) {
        PyObject *blob = encode_top_impl(book, f, side, depth, published_at, mid_spread);
        int ok = 0;
        if (blob == Py_None) {
            Py_DECREF(blob);
            blob = PyObject_CallFunction(fallback, "OOOnL", book, f, side, depth, published_at);
        }
        if (blob) {
            PyObject *pair = PyTuple_Pack(2, token, blob);
            ok = pair && PyList_Append(out, pair) == 0;
            Py_XDECREF(pair);
        }
        Py_DECREF(book);
        Py_DECREF(side);
        Py_XDECREF(blob);
        Py_DECREF(token);
        if (!ok) {
            more = -1;
            break;
        }
    }
    tops_end(&ti);
    if (more == 0) return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* zlib's CRC-32 (bus.shard_of: crc32(token_id) mod n). */
static uint32_t g_crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        g_crc_table[n] = c;
    }
}

static uint32_t crc32_bytes(const char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = g_crc_table[(c ^ (uint8_t)p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static int put_bulk(buf_t *b, const char *p, Py_ssize_t n) {
    char head[32];
    int h = snprintf(head, sizeof head, "$%zd\r\n", n);
    if (buf_reserve(b, h + n + 2) < 0) return -1;
    memcpy(b->p + b->n, head, (size_t)h);
    memcpy(b->p + b->n + h, p, (size_t)n);
    memcpy(b->p + b->n + h + n, "\r\n", 2);
    b->n += h + n + 2;
    return 0;
}

/* pack_publish(items, n_shards, maxlen, book_prefix, stream_prefix) -> (bytes, replies):
 * publisher.pack_publish byte for byte (MSET of each token's latest top, then one XADD per
 * shard in order of first appearance, its tops joined by newlines). */
static PyObject *pack_publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyBytes_Check(args[3]) || !PyBytes_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_publish(items, n_shards, maxlen, book_prefix: bytes, "
                        "stream_prefix: bytes)");
        return NULL;
    }
    Py_ssize_t n_shards = PyLong_AsSsize_t(args[1]);
    if (n_shards == -1 && PyErr_Occurred()) return NULL;
    long long maxlen = PyLong_AsLongLong(args[2]);
    if (maxlen == -1 && PyErr_Occurred()) return NULL;
    if (n_shards < 1) n_shards = 1;
    PyObject *seq = PySequence_Fast(args[0], "items must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *latest = PyDict_New(), *result = NULL;
    Py_ssize_t *shard_of_item = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n ? n : 1));
    Py_ssize_t *order = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n_shards);
    Py_ssize_t *count = PyMem_Calloc((size_t)n_shards, sizeof(Py_ssize_t));
    Py_ssize_t *bytes = PyMem_Calloc((size_t)n_shards, sizeof(Py_ssize_t));
    Py_ssize_t shards_seen = 0;
    buf_t b;
    buf_init(&b);
    if (!latest || !shard_of_item || !order || !count || !bytes) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *const *items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "items must be (token_id: str, blob: bytes)");
            goto done;
        }
        PyObject *token = PyTuple_GET_ITEM(item, 0), *blob = PyTuple_GET_ITEM(item, 1);
        if (PyDict_SetItem(latest, token, blob) < 0) goto done;
        Py_ssize_t tn;
        const char *tp = PyUnicode_AsUTF8AndSize(token, &tn);
        if (!tp) goto done;
        Py_ssize_t shard = n_shards <= 1 ? 0 : (Py_ssize_t)(crc32_bytes(tp, tn) % (uint32_t)n_shards);
        shard_of_item[i] = shard;
        if (!count[shard]) order[shards_seen++] = shard;
        count[shard]++;
        bytes[shard] += PyBytes_GET_SIZE(blob) + 1;
    }
    char head[64];
    int h = snprintf(head, sizeof head, "*%zd\r\n$4\r\nMSET\r\n", 1 + 2 * PyDict_GET_SIZE(latest));
    if (buf_put(&b, head, h) < 0) goto done;
    const char *bp = PyBytes_AS_STRING(args[3]);
    Py_ssize_t bn = PyBytes_GET_SIZE(args[3]);
    Py_ssize_t pos = 0;
    PyObject *token, *blob;
    while (PyDict_Next(latest, &pos, &token, &blob)) {
        Py_ssize_t tn;
        const char *tp = PyUnicode_AsUTF8AndSize(token, &tn);
        if (!tp) goto done;
        h = snprintf(head, sizeof head, "$%zd\r\n", bn + tn);
        if (buf_put(&b, head, h) < 0 || buf_put(&b, bp, bn) < 0 || buf_put(&b, tp, tn) < 0 ||
            BUF_LIT(&b, "\r\n") < 0 ||
            put_bulk(&b, PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob)) < 0)
            goto done;
    }
    char cap[32];
    int capn = snprintf(cap, sizeof cap, "%lld", maxlen);
    for (Py_ssize_t k = 0; k < shards_seen; k++) {
        Py_ssize_t shard = order[k];
        char stream[160];
        int sn = snprintf(stream, sizeof stream, "%.*s%zd", (int)PyBytes_GET_SIZE(args[4]),
                          PyBytes_AS_STRING(args[4]), shard);
        if (sn < 0 || sn >= (int)sizeof stream) {
            PyErr_SetString(PyExc_ValueError, "stream prefix too long");
            goto done;
        }
        if (BUF_LIT(&b, "*8\r\n$4\r\nXADD\r\n") < 0 || put_bulk(&b, stream, sn) < 0 ||
            BUF_LIT(&b, "$6\r\nMAXLEN\r\n$1\r\n~\r\n") < 0 || put_bulk(&b, cap, capn) < 0 ||
            BUF_LIT(&b, "$1\r\n*\r\n$4\r\ntops\r\n") < 0)
            goto done;
        Py_ssize_t len = bytes[shard] - 1; /* newline-joined */
        h = snprintf(head, sizeof head, "$%zd\r\n", len);
        if (buf_put(&b, head, h) < 0 || buf_reserve(&b, len + 2) < 0) goto done;
        int first = 1;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (shard_of_item[i] != shard) continue;
            PyObject *v = PyTuple_GET_ITEM(items[i], 1);
            if (!first) b.p[b.n++] = '\n';
            first = 0;
            memcpy(b.p + b.n, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
            b.n += PyBytes_GET_SIZE(v);
        }
        memcpy(b.p + b.n, "\r\n", 2);
        b.n += 2;
    }
    PyObject *payload = PyBytes_FromStringAndSize(b.p, b.n);
    if (payload) {
        result = Py_BuildValue("(Nn)", payload, 1 + shards_seen);
    }
done:
    buf_free(&b);
    PyMem_Free(shard_of_item);
    PyMem_Free(order);
    PyMem_Free(count);
    PyMem_Free(bytes);
    Py_XDECREF(latest);
    Py_DECREF(seq);
    return result;
}

/* The MSET key's bulk string ($n\r\n<book_prefix><token>\r\n) and the token's shard, from the
 * book's cache when it was made for this token, prefix and shard count. */
static int token_key(buf_t *b, top_cache_t *tc, PyObject *token, PyObject *prefix,
                     Py_ssize_t n_shards, Py_ssize_t *shard) {
    if (tc && tc->key && tc->token == token && tc->key_prefix == prefix &&
        tc->shards == n_shards) {
        *shard = tc->shard;
        return buf_put(b, tc->key, tc->key_n);
    }
    Py_ssize_t tn;
    const char *tp = PyUnicode_AsUTF8AndSize(token, &tn);
    if (!tp) return -1;
    *shard = n_shards <= 1 ? 0 : (Py_ssize_t)(crc32_bytes(tp, tn) % (uint32_t)n_shards);
    Py_ssize_t start = b->n, bn = PyBytes_GET_SIZE(prefix);
    char head[32];
    int h = snprintf(head, sizeof head, "$%zd\r\n", bn + tn);
    if (buf_put(b, head, h) < 0 || buf_put(b, PyBytes_AS_STRING(prefix), bn) < 0 ||
        buf_put(b, tp, tn) < 0 || BUF_LIT(b, "\r\n") < 0)
        return -1;
    if (tc) {
        if (cache_bytes(&tc->key, &tc->key_n, b->p + start, b->n - start) < 0) return -1;
        cache_ref(&tc->token, token);
        cache_ref(&tc->key_prefix, prefix);
        tc->shards = n_shards;
        tc->shard = *shard;
    }
    return 0;
}

/* encode_pack's working buffers, kept from one flush to the next (a flush writes about 1 KB
 * per top: fresh buffers of that size would be fresh pages from the kernel every time). Not
 * re-entrant: a call that finds them in use (another thread ran Python code of ours in the
 * middle of a flush) works on buffers of its own. */
typedef struct {
    buf_t mset, top;
    buf_t *shard; /* n_shard heap buffers (never their inline storage: the array moves) */
    Py_ssize_t n_shard;
} pack_bufs_t;
static pack_bufs_t g_pack;
static int g_pack_busy = 0;
#define PACK_KEEP_MAX (16 << 20) /* a buffer grown past this is freed after the flush */

static void pack_bufs_init(pack_bufs_t *pb) {
    buf_init(&pb->mset);
    buf_init(&pb->top);
    pb->shard = NULL;
    pb->n_shard = 0;
}

static void pack_bufs_free(pack_bufs_t *pb) {
    buf_free(&pb->mset);
    buf_free(&pb->top);
    for (Py_ssize_t k = 0; k < pb->n_shard; k++) PyMem_Free(pb->shard[k].p);
    PyMem_Free(pb->shard);
    pack_bufs_init(pb);
}

/* Ready for a flush with n_shards shards: every buffer empty. */
static int pack_bufs_ready(pack_bufs_t *pb, Py_ssize_t n_shards) {
    pb->mset.n = pb->top.n = 0;
    if (n_shards > pb->n_shard) {
        buf_t *s = PyMem_Realloc(pb->shard, sizeof(buf_t) * (size_t)n_shards);
        if (!s) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t k = pb->n_shard; k < n_shards; k++) {
            s[k].p = NULL;
            s[k].n = s[k].cap = 0;
        }
        pb->shard = s;
        pb->n_shard = n_shards;
    }
    for (Py_ssize_t k = 0; k < n_shards; k++) pb->shard[k].n = 0;
    return 0;
}

/* Room for `extra` more bytes in a shard buffer (heap only: see pack_bufs_t). */
static int shard_reserve(buf_t *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->n + extra) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* After a flush: drop what grew too big to keep. */
static void pack_bufs_trim(pack_bufs_t *pb) {
    int big = pb->mset.cap > PACK_KEEP_MAX || pb->top.cap > PACK_KEEP_MAX;
    for (Py_ssize_t k = 0; k < pb->n_shard; k++) big |= pb->shard[k].cap > PACK_KEEP_MAX;
    if (big) pack_bufs_free(pb);
}

/* The RESP length line's size (<lead><n>\r\n). */
static Py_ssize_t resp_len_size(Py_ssize_t n) {
    Py_ssize_t d = 1;
    for (size_t v = (size_t)n; v >= 10; v /= 10) d++;
    return d + 3;
}

/* encode_pack(tokens, table, depth, published_at, mid_spread, fallback, n_shards, maxlen,
 *             book_prefix, stream_prefix) -> (payload, replies, tops)
 * encode_tops followed by pack_publish, byte for byte, in one pass and without a bytes
 * object per top: `tokens` are distinct token ids (BookKeeper's dirty set); each one with a
 * book gives one top, written straight into the MSET and into its shard's XADD entry. */
static PyObject *encode_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !PyBytes_Check(args[8]) || !PyBytes_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_pack(tokens, table, depth, published_at, mid_spread, fallback, "
                        "n_shards, maxlen, book_prefix: bytes, stream_prefix: bytes)");
        return NULL;
    }
    TokensObject *T = tokens_arg(args[1]);
    if (!T) return NULL;
    PyObject *tokens = args[0], *mid_spread = args[4], *fallback = args[5],
             *book_prefix = args[8], *stream_prefix = args[9];
    Py_ssize_t depth = PyLong_AsSsize_t(args[2]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    long long published_at = PyLong_AsLongLong(args[3]);
    if (published_at == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n_shards = PyLong_AsSsize_t(args[6]);
    if (n_shards == -1 && PyErr_Occurred()) return NULL;
    long long maxlen = PyLong_AsLongLong(args[7]);
    if (maxlen == -1 && PyErr_Occurred()) return NULL;
    if (n_shards < 1) n_shards = 1;
    if (PyBytes_GET_SIZE(stream_prefix) > 100) {
        PyErr_SetString(PyExc_ValueError, "stream prefix too long");
        return NULL;
    }
    char pa[32];
    Py_ssize_t pan = int_text(pa, published_at);

    PyObject *result = NULL, *token = NULL, *book, *f, *side;
    tops_iter_t ti;
    int iterating = 0, more;
    pack_bufs_t own, *pb = &g_pack;
    int shared = !g_pack_busy;
    if (shared) {
        g_pack_busy = 1;
    } else {
        pb = &own;
        pack_bufs_init(pb);
    }
    Py_ssize_t *order = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n_shards);
    Py_ssize_t tops = 0, shards_seen = 0;
    if (!order) {
        PyErr_NoMemory();
        goto done;
    }
    if (pack_bufs_ready(pb, n_shards) < 0) goto done;
    buf_t *mset = &pb->mset, *top = &pb->top;
    /* distinct: the MSET would keep one top per token but XADD every one */
    if (tops_begin(&ti, tokens, T, 1) < 0) goto done;
    iterating = 1;
    while ((more = tops_next(&ti, &token, &book, &f, &side)) > 0) {
        int ok = 0, r;
        top->n = 0;
        r = encode_top_into(top, book, f, side, depth, pa, pan, mid_spread);
        if (r < 0) goto next;
        if (r == 0) {
            PyObject *blob =
                PyObject_CallFunction(fallback, "OOOnL", book, f, side, depth, published_at);
            if (!blob) goto next;
            if (!PyBytes_Check(blob)) {
                Py_DECREF(blob);
                PyErr_SetString(PyExc_TypeError, "fallback must return bytes");
                goto next;
            }
            r = buf_put(top, PyBytes_AS_STRING(blob), PyBytes_GET_SIZE(blob));
            Py_DECREF(blob);
            if (r < 0) goto next;
        }
        Py_ssize_t shard;
        LevelsObject *core = core_of(book);
        if (token_key(mset, core ? &core->tc : NULL, token, book_prefix, n_shards, &shard) < 0)
            goto next;
        if (put_resp_len(mset, '$', top->n) < 0 || buf_put(mset, top->p, top->n) < 0 ||
            BUF_LIT(mset, "\r\n") < 0)
            goto next;
        buf_t *sb = &pb->shard[shard];
        if (shard_reserve(sb, top->n + 1) < 0) goto next;
        if (sb->n)
            sb->p[sb->n++] = '\n';
        else
            order[shards_seen++] = shard;
        memcpy(sb->p + sb->n, top->p, (size_t)top->n);
        sb->n += top->n;
        tops++;
        ok = 1;
    next:
        Py_DECREF(book);
        Py_DECREF(side);
        Py_CLEAR(token);
        if (!ok) goto done;
    }
    if (more < 0) goto done;
    if (!tops) {
        result = Py_BuildValue("(y#nn)", "", (Py_ssize_t)0, (Py_ssize_t)0, (Py_ssize_t)0);
        goto done;
    }
    {
        /* MSET, then one XADD per shard in order of first appearance (pack_publish), written
         * straight into the payload: its size is counted first, and the writer below never
         * goes past it (a miscount is an error, not an overflow). */
#define XADD_HEAD "*8\r\n$4\r\nXADD\r\n"
#define XADD_MAXLEN "$6\r\nMAXLEN\r\n$1\r\n~\r\n"
#define XADD_TOPS "$1\r\n*\r\n$4\r\ntops\r\n"
#define LIT_LEN(lit) ((Py_ssize_t)(sizeof(lit) - 1))
        char cap[32], stream[160];
        int capn = snprintf(cap, sizeof cap, "%lld", maxlen);
        Py_ssize_t spn = PyBytes_GET_SIZE(stream_prefix);
        Py_ssize_t total = resp_len_size(1 + 2 * tops) + LIT_LEN("$4\r\nMSET\r\n") + mset->n;
        for (Py_ssize_t k = 0; k < shards_seen; k++) {
            Py_ssize_t sn = spn + resp_len_size(order[k]) - 3; /* prefix + the shard's digits */
            Py_ssize_t body = pb->shard[order[k]].n;
            total += LIT_LEN(XADD_HEAD) + resp_len_size(sn) + sn + 2 + LIT_LEN(XADD_MAXLEN) +
                     resp_len_size(capn) + capn + 2 + LIT_LEN(XADD_TOPS) + resp_len_size(body) +
                     body + 2;
        }
        PyObject *payload = PyBytes_FromStringAndSize(NULL, total);
        if (!payload) goto done;
        char *o = PyBytes_AS_STRING(payload), *end = o + total, num[24];
        int fail = 0;
#define OUT(p, n)                                             \
    do {                                                      \
        Py_ssize_t n_ = (n);                                  \
        if (fail || end - o < n_) {                           \
            fail = 1;                                         \
        } else {                                              \
            memcpy(o, (p), (size_t)n_);                       \
            o += n_;                                          \
        }                                                     \
    } while (0)
#define OUT_LEN(lead, v)                                      \
    do {                                                      \
        int k_ = snprintf(num, sizeof num, "%c%zd\r\n", (lead), (Py_ssize_t)(v)); \
        OUT(num, k_);                                         \
    } while (0)
        OUT_LEN('*', 1 + 2 * tops);
        OUT("$4\r\nMSET\r\n", LIT_LEN("$4\r\nMSET\r\n"));
        OUT(mset->p, mset->n);
        for (Py_ssize_t k = 0; k < shards_seen; k++) {
            Py_ssize_t shard = order[k];
            int sn = snprintf(stream, sizeof stream, "%.*s%zd", (int)spn,
                              PyBytes_AS_STRING(stream_prefix), shard);
            OUT(XADD_HEAD, LIT_LEN(XADD_HEAD));
            OUT_LEN('$', sn);
            OUT(stream, sn);
            OUT("\r\n", 2);
            OUT(XADD_MAXLEN, LIT_LEN(XADD_MAXLEN));
            OUT_LEN('$', capn);
            OUT(cap, capn);
            OUT("\r\n", 2);
            OUT(XADD_TOPS, LIT_LEN(XADD_TOPS));
            OUT_LEN('$', pb->shard[shard].n);
            OUT(pb->shard[shard].p, pb->shard[shard].n);
            OUT("\r\n", 2);
        }
#undef OUT
#undef OUT_LEN
        if (fail || o != end) {
            Py_DECREF(payload);
            PyErr_SetString(PyExc_SystemError, "encode_pack: payload size miscounted");
            goto done;
        }
        result = Py_BuildValue("(Nnn)", payload, 1 + shards_seen, tops);
    }
done:
    Py_XDECREF(token);
    if (iterating) tops_end(&ti);
    PyMem_Free(order);
    if (shared) {
        pack_bufs_trim(pb);
        g_pack_busy = 0;
    } else {
        pack_bufs_free(pb);
    }
    return result;
}

/* bind_native(NativeOrderBook): the class whose `_core` slot holds a Levels. */
static PyObject *bind_native(PyObject *self, PyObject *cls) {
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind_native(NativeOrderBook)");
        return NULL;
    }
    PyObject *d = PyObject_GetAttrString(cls, "_core");
    if (!d) return NULL;
    Py_ssize_t offset = -1;
    if (Py_TYPE(d) == &PyMemberDescr_Type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX) offset = m->offset;
    }
    Py_DECREF(d);
    if (offset < 0) {
        PyErr_SetString(PyExc_TypeError, "NativeOrderBook._core must be a slot");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(g_native_type, cls);
    g_core_offset = offset;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(price_strs, parse_price, orjson_dumps, OrderBook): what the C code shares."},
    {"bind_native", (PyCFunction)bind_native, METH_O,
     "bind_native(NativeOrderBook): the book class whose levels live in a Levels."},
    {"feed_price_change", (PyCFunction)(void (*)(void))feed_price_change, METH_FASTCALL,
     "feed_price_change(keeper, raw) -> bool: apply a price_change frame, False if the "
     "Python path must handle it (nothing changed then)."},
    {"encode_top", (PyCFunction)(void (*)(void))encode_top, METH_FASTCALL,
     "encode_top(book, fresh, last_trade_side, depth, published_at, mid_spread) -> bytes|None"},
    {"encode_tops", (PyCFunction)(void (*)(void))encode_tops, METH_FASTCALL,
     "encode_tops(tokens, table, depth, published_at, mid_spread, fallback)"},
    {"pack_publish", (PyCFunction)(void (*)(void))pack_publish, METH_FASTCALL,
     "pack_publish(items, n_shards, maxlen, book_prefix, stream_prefix) -> (bytes, replies)"},
    {"encode_pack", (PyCFunction)(void (*)(void))encode_pack, METH_FASTCALL,
     "encode_pack(tokens, table, depth, published_at, mid_spread, fallback, n_shards, maxlen, "
     "book_prefix, stream_prefix) -> (payload, replies, tops)"},
    {"hash_text", (PyCFunction)(void (*)(void))hash_text, METH_FASTCALL,
     "hash_text(book, timestamp, last_trade_price) -> bytes: the book hash's SHA-1 input."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, .m_name = "_fastbook", .m_size = -1, .m_methods = methods};

#define INTERN(var, text)                                   \
    do {                                                    \
        if (!((var) = PyUnicode_InternFromString(text))) return NULL; \
    } while (0)

PyMODINIT_FUNC PyInit__fastbook(void) {
    INTERN(s_stats, "stats");
    INTERN(s_tokens, "_tokens");
    INTERN(s_verify, "verify");
    INTERN(s_frames, "frames");
    INTERN(s_events, "events");
    INTERN(s_entries_applied, "entries_applied");
    INTERN(s_entries_untracked, "entries_untracked");
    INTERN(s_entries_skipped_resync, "entries_skipped_resync");
    INTERN(s_bids, "bids");
    INTERN(s_asks, "asks");
    INTERN(s_bid_px, "_bid_px");
    INTERN(s_ask_px, "_ask_px");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_hash, "hash");
    INTERN(s_verify_m, "_verify");
    INTERN(s_price_change, "price_change");
    INTERN(s_flush, "flush");
    INTERN(s_entry, "entry");
    INTERN(s_asset_id, "asset_id");
    INTERN(s_market, "market");
    INTERN(s_last_trade_price, "last_trade_price");
    INTERN(s_tick_size, "tick_size");
    INTERN(s_min_order_size, "min_order_size");
    INTERN(s_neg_risk, "neg_risk");
    crc_init();
    pack_bufs_init(&g_pack);
    if (PyType_Ready(&Levels_Type) < 0 || PyType_Ready(&Tokens_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&Levels_Type);
    if (PyModule_AddObject(m, "Levels", (PyObject *)&Levels_Type) < 0) {
        Py_DECREF(&Levels_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Tokens_Type);
    if (PyModule_AddObject(m, "Tokens", (PyObject *)&Tokens_Type) < 0) {
        Py_DECREF(&Tokens_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
