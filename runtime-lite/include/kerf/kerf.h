/* runtime-lite C API: load a .kerf artifact (mmap), run it on the CPU with a KV cache, tokenize,
 * sample. C99-compatible; no dependency beyond the C/C++ standard libraries.
 *
 * Every function returning int returns KERF_OK (0) or a negative kerf_status; details of the last
 * failure are written to the caller's error buffer where one is taken. Objects are not thread-safe;
 * one session per thread (a session may run its own worker threads, kerf_session_set_threads). */
#ifndef KERF_KERF_H_
#define KERF_KERF_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kerf_status {
  KERF_OK = 0,
  KERF_ERR_IO = -1,          /* file cannot be opened / mapped */
  KERF_ERR_FORMAT = -2,      /* not a .kerf file, bad magic, unsupported major version */
  KERF_ERR_CORRUPT = -3,     /* truncated, out-of-bounds offset, checksum mismatch */
  KERF_ERR_UNSUPPORTED = -4, /* unknown op / dtype / attribute in the program */
  KERF_ERR_ARGUMENT = -5,    /* bad argument (token id out of range, NULL pointer) */
  KERF_ERR_CONTEXT = -6,     /* KV cache full (position would exceed n_ctx) */
  KERF_ERR_MEMORY = -7       /* allocation failed */
} kerf_status;

typedef struct kerf_model kerf_model;
typedef struct kerf_session kerf_session;

/* flags for kerf_model_open / kerf_model_open_memory */
#define KERF_OPEN_VERIFY_DATA 1u    /* verify every tensor payload's XXH64 (the default; kept for old callers) */
#define KERF_OPEN_NO_VERIFY_DATA 2u /* fast path: skip the payload hashes (header and section hashes and every
                                       bounds check still run); ignored when KERF_OPEN_VERIFY_DATA is also set */

/* Maps `path` and checks it (formats/SPEC.md section 8): header, bounds of every section and tensor
 * (64-bit, overflow-checked), header and section XXH64 hashes, and every tensor payload's XXH64
 * unless KERF_OPEN_NO_VERIFY_DATA. On failure *out = NULL and `err` (if not NULL) gets a
 * NUL-terminated message naming the file, the section/tensor and the offset; KERF_ERR_IO (cannot
 * open / map), KERF_ERR_FORMAT (not a .kerf file, other major version), KERF_ERR_CORRUPT (bounds,
 * hashes, invalid fields), KERF_ERR_UNSUPPORTED (unknown dtype / op / attribute), KERF_ERR_MEMORY.
 * Also selects the integer kernels of tiled weights (format 1.2): the best instruction set of this
 * CPU, or the one the environment variable KERF_ISA names (scalar, avx2, avx512vnni, neon,
 * neondot); KERF_ERR_UNSUPPORTED, with a message naming KERF_ISA, when it names an unknown ISA or
 * one this build or CPU lacks (never a silent fallback). */
int kerf_model_open(const char* path, uint32_t flags, kerf_model** out, char* err, size_t err_size);
/* The same checks on an artifact already in memory (an app asset, an embedded array). The buffer is
 * borrowed: it must stay valid and unchanged until kerf_model_close. `data` must be 64-byte aligned
 * (tiled weights are read in place) and `size` is the whole file; `name` (may be NULL: "<memory>")
 * is the name error messages use. KERF_ERR_ARGUMENT for a NULL or misaligned buffer. */
int kerf_model_open_memory(const void* data, size_t size, uint32_t flags, const char* name, kerf_model** out,
                           char* err, size_t err_size);
void kerf_model_close(kerf_model* m);
/* The instruction set of the integer kernels that run the model's tiled weights ("scalar", "avx2",
 * "avx512vnni", "neon", "neondot"); NULL for a NULL model. */
const char* kerf_model_isa(const kerf_model* m);

int kerf_model_vocab_size(const kerf_model* m);
int kerf_model_max_seq_len(const kerf_model* m);
/* Metadata lookups; return 0 when the key exists with that type. String/bytes pointers point into
 * the mapping and live as long as the model. */
int kerf_model_meta_int(const kerf_model* m, const char* key, int64_t* out);
int kerf_model_meta_float(const kerf_model* m, const char* key, double* out);
int kerf_model_meta_string(const kerf_model* m, const char* key, const char** data, size_t* size);

/* A session owns the activations and the KV cache (n_ctx positions; 0 = model max_seq_len).
 * KERF_ERR_ARGUMENT when n_ctx < 0 or n_ctx > max_seq_len; KERF_ERR_MEMORY when the KV caches
 * (n_ctx x n_kv_heads x head_dim float32, twice per Attention op; see kerf_session_set_kv_type)
 * cannot be allocated. A new session runs on the calling thread (kerf_session_set_threads). */
int kerf_session_create(const kerf_model* m, int n_ctx, kerf_session** out);
/* flags for kerf_session_create_ex */
#define KERF_SESSION_CPU_ONLY 1u /* run every op on the CPU, whatever the artifact's placement (an explicit
                                    override, e.g. to compare a GPU/NPU placement with the CPU) */
/* kerf_session_create with flags and a message. Ops placed on the GPU or NPU (format 1.3: OpEntry
 * backend, metadata placement.prefill) get that unit's backend: OpenCL (device chosen by the
 * environment variable KERF_OPENCL_DEVICE, "P:D" indices or a name substring; default the first GPU,
 * else the first device) and the integer-only NPU reference (docs/npu-arithmetic.md). When a unit is
 * unavailable (runtime built without OpenCL, no device) or cannot run one of its ops (e.g. a weight
 * dtype it lacks), KERF_ERR_UNSUPPORTED with `err` naming the op and the reason: never a silent
 * fallback to the CPU. Units run asynchronously where that can help: OpenCL enqueues without
 * waiting, and the NPU reference gets its own thread when some CPU op of the placement could run
 * while an NPU op is pending (the environment variable KERF_SYNC_UNITS turns that off); a value
 * moving between units waits for its producer, and results do not depend on the overlap. */
int kerf_session_create_ex(const kerf_model* m, int n_ctx, uint32_t flags, kerf_session** out, char* err,
                           size_t err_size);
void kerf_session_free(kerf_session* s);
/* Message of the last failed kerf_session_eval ("" when none); owned by the session. */
const char* kerf_session_last_error(const kerf_session* s);

/* Compute units (kerf::fmt::Backend): 0 cpu, 1 gpu, 2 npu. */
#define KERF_UNIT_CPU 0
#define KERF_UNIT_GPU 1
#define KERF_UNIT_NPU 2
/* Per-unit counters since the session was created or kerf_session_reset_stats. Times in ns. */
typedef struct kerf_unit_stats {
  uint64_t ops;            /* op runs on the unit */
  uint64_t run_ns;         /* host wall time running them (an asynchronous unit: enqueue + waits) */
  uint64_t busy_ns;        /* device-measured busy time (0 when the unit cannot say; the CPU: 0) */
  uint64_t uploads, upload_bytes;      /* host -> unit transfers (NPU: quantization to its codes) */
  uint64_t downloads, download_bytes;  /* unit -> host transfers (NPU: dequantization) */
  uint64_t transfer_ns;    /* host wall time in transfers */
} kerf_unit_stats;
/* KERF_ERR_ARGUMENT for NULL, an unknown unit, or a unit the session does not use. */
int kerf_session_unit_stats(const kerf_session* s, int unit, kerf_unit_stats* out);
/* The device behind a unit the session uses ("cpu (runtime-lite)", the OpenCL device, ...); NULL otherwise. */
const char* kerf_session_unit_device(const kerf_session* s, int unit);
void kerf_session_reset_stats(kerf_session* s);
/* Threads that evaluate the session: n >= 1, or 0 = the number of online CPUs (default: 1). The
 * session's n - 1 worker threads persist until the next call or kerf_session_free; between
 * evaluations they spin briefly (~0.2 ms), then sleep. Work is split by output rows / row tiles
 * (Linear, GatedFFN), by (head, token) pairs (Attention) and by tokens (norms, rotary, Add); an op
 * with fewer than ~64K multiply-adds runs on the calling thread. Results are bit-identical for
 * every thread count. KERF_ERR_ARGUMENT for NULL or n outside [0, 1024]; KERF_ERR_MEMORY when the
 * per-thread scratch cannot be allocated (the session keeps its threads) or a thread cannot be
 * created (the session then runs on 1 thread). */
int kerf_session_set_threads(kerf_session* s, int n);
/* Threads of the session (1 for NULL). */
int kerf_session_threads(const kerf_session* s);

/* KV cache element types (kerf_session_set_kv_type). */
#define KERF_KV_F32 0 /* float32: the default */
#define KERF_KV_F16 1 /* IEEE half, round to nearest even: half the memory; K and V lose precision
                         (relative 2^-11 per element), which moves stories260K's logits by ~6e-4 of
                         the largest |logit| (tests/runtime/test_executor.cpp bounds it by 2e-3) */
/* Reallocates the KV caches with elements of `type` and empties them (position 0). This is the CPU's
 * cache: Attention ops placed on the GPU keep f32 caches on the device, and those on the NPU keep
 * their integer codes (docs/npu-arithmetic.md), whatever the type.
 * KERF_ERR_ARGUMENT for NULL or an unknown type; KERF_ERR_MEMORY when the new caches cannot be
 * allocated (the session is then unchanged). */
int kerf_session_set_kv_type(kerf_session* s, int type);

/* Empties the KV cache (position 0). */
void kerf_session_reset(kerf_session* s);
/* Number of positions already in the KV cache. */
int kerf_session_pos(const kerf_session* s);
/* Runs tokens[0..n) at positions pos..pos+n-1 (prefill when n > 1, decode when n == 1), appending
 * to the KV cache. If `logits` is not NULL it receives float32 logits: n x vocab values (row i =
 * prediction after tokens[i]) when all_logits != 0, else only the last row (vocab values).
 * Errors (nothing is evaluated and the position does not move): KERF_ERR_ARGUMENT for NULL
 * tokens, n < 1 or a token outside [0, vocab); KERF_ERR_CONTEXT when pos + n > n_ctx;
 * KERF_ERR_MEMORY when activation buffers cannot be allocated. */
int kerf_session_eval(kerf_session* s, const int32_t* tokens, int n, float* logits, int all_logits);

/* llama2.c tokenizer stored in the artifact. Encodes UTF-8 `text` (BOS id 1 first when add_bos,
 * then a dummy-prefix " " piece -- always, even for empty text, like EVAL.md's encode_llama2c --,
 * characters, byte fallback id = byte + 3, then best-score pair merges, the first pair on equal
 * scores). Writes at most `max_tokens` ids; *n_tokens gets the full count (KERF_ERR_ARGUMENT if it
 * did not fit). KERF_ERR_UNSUPPORTED when the artifact has no llama2c tokenizer. */
int kerf_tokenize(const kerf_model* m, const char* text, int add_bos, int32_t* tokens, int max_tokens,
                  int* n_tokens);
/* The text of `token` following `prev` (llama2.c decode rules: leading space stripped after BOS,
 * "<0xAB>" byte pieces become the byte). Points into the model or a per-model static buffer valid
 * until the next call. NULL when token is out of range. */
const char* kerf_token_to_piece(const kerf_model* m, int32_t prev, int32_t token);
int32_t kerf_token_bos(const kerf_model* m);
int32_t kerf_token_eos(const kerf_model* m);

/* Sampling. temperature 0 = greedy (argmax, lowest id on ties); otherwise softmax(logits / T),
 * then nucleus (top-p) filtering when 0 < top_p < 1 (the smallest set of most likely tokens whose
 * probability sum exceeds top_p, ties by lower id; top_p >= 1 or <= 0 = no filtering), then a draw
 * from a xorshift64* generator whose state is splitmix64(seed) (any seed, 0 included, is valid).
 * Deterministic for a given seed. create returns NULL for NaN arguments or on allocation failure;
 * sample returns -1 for a NULL sampler/logits or vocab < 1. */
typedef struct kerf_sampler kerf_sampler;
kerf_sampler* kerf_sampler_create(float temperature, float top_p, uint64_t seed);
void kerf_sampler_free(kerf_sampler* s);
int32_t kerf_sampler_sample(kerf_sampler* s, const float* logits, int vocab);

const char* kerf_status_string(int status);

/* Introspection (for `kerf inspect` and reports). Indices run from 0 to count-1; out-of-range
 * indices return KERF_ERR_ARGUMENT (or NULL). Strings point into the model. */
int kerf_model_meta_count(const kerf_model* m);
const char* kerf_model_meta_key(const kerf_model* m, int index); /* NUL-terminated copy owned by m */
typedef struct kerf_tensor_info {
  const char* name;       /* NUL-terminated, owned by the model */
  const char* dtype_name; /* "f32", "q4_asym", "qsym", "qasym", "ternary", "binary", ... (the dtype only) */
  uint32_t dtype;         /* kerf::fmt::DType */
  uint32_t rank;
  int64_t shape[4];
  uint32_t group_size;
  uint64_t bytes;         /* payload bytes */
  /* Added with format 1.1 (generic quantized dtypes): */
  uint32_t flags;         /* TensorEntry.flags: code bits (bits 0-7) and scale format (bits 8-15, 0 f16,
                             1 k6) of qsym/qasym/ternary/binary; 0 for other dtypes */
  const char* precision;  /* full precision, owned by the model: "f32", "q4_asym g32", "qasym4/f16 g32",
                             "qsym3/k6 g32", "ternary/k6 g64", "binary/f16 g32" */
} kerf_tensor_info;
int kerf_model_tensor_count(const kerf_model* m);
int kerf_model_tensor_info(const kerf_model* m, int index, kerf_tensor_info* out);
int kerf_model_op_count(const kerf_model* m);
/* One line: "layers.0.q = Linear(layers.0.attn_norm, @model.layers.0.wq.weight) [cpu]"; the unit is
 * the decode placement, "[npu prefill / cpu]" when the prefill placement differs. */
int kerf_model_op_describe(const kerf_model* m, int index, char* buf, size_t size);
/* An op of the program and the tensors it reads (e.g. for counting the weight bytes a token reads). */
typedef struct kerf_op_info {
  const char* op;  /* "Embedding", "RMSNorm", "Linear", "Rotary", "Attention", "GatedFFN", "Add" */
  int n_tensors;   /* tensor inputs, at most 4 */
  int tensors[4];  /* their indices for kerf_model_tensor_info, in input order (GatedFFN: w1, w3, w2) */
} kerf_op_info;
/* KERF_ERR_ARGUMENT for NULL or an index outside [0, kerf_model_op_count). */
int kerf_model_op_info(const kerf_model* m, int index, kerf_op_info* out);

#ifdef __cplusplus
}
#endif
#endif /* KERF_KERF_H_ */
