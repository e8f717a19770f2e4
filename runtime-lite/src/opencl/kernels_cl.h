// OpenCL C source of the GPU backend's kernels (OpenCL C 1.2), built once per backend by
// gpu_backend.cpp with "-cl-std=CL1.2 -DKERF_TS=<gemm tile>" (and
// -cl-fp32-correctly-rounded-divide-sqrt where the device supports it).
//
// Semantics are those of the CPU reference kernels (runtime-lite/src/kernels.cpp):
//  * weights stay in their packed payload (formats/SPEC.md section 6, plain layouts) and are
//    dequantized on the fly (dq: one element; dq8: 8 consecutive ones, parameters fetched once per
//    group) with the normative f32 expressions of SPEC 6.4: the same bits as the CPU's dequant_row. No contraction of a product and a sum into an fma: FP_CONTRACT OFF, and
//    the two additions of SPEC 6.4 (qasym / q4_asym: p + m) also go through rnd(), an OR with a
//    runtime zero (kernel argument nf = 0) that no compiler can see through, so the product is a
//    rounded f32 even where a vendor compiler ignored the pragma;
//  * Rotary reads a cos / sin table the host filled with rope_table_fill (the CPU's values) and uses
//    the CPU's f32 expressions (products rounded through rnd() too): bit-identical;
//  * sums (GEMV / GEMM dot products, RMSNorm, softmax) are formed in another order than on the CPU,
//    and exp / sqrt / divide are the device's: results differ from the CPU by rounding only.
// Weight descriptor (ulong8 wd, filled by the host in gpu_backend.cpp add_weight()):
//   s0 = dtype | code bits << 8 | k6 << 16;  s1 = cols K;  s2 = group g;  s3 = code bytes per row;
//   s4 = offset of the scales (k6: the 6-bit sc array);  s5 = offset of the mins (k6: mc);
//   s6 = k6: offset of the super-scales d;  s7 = k6 qasym: offset of the super-mins dm.
#pragma once

namespace kerf::rt::gpu {

inline constexpr const char* kKernelSource = R"CLC(
#pragma OPENCL FP_CONTRACT OFF

#define DT_F32 0u
#define DT_F16 1u
#define DT_BF16 2u
#define DT_Q8 16u
#define DT_Q4 17u
#define DT_QSYM 18u
#define DT_QASYM 19u
#define DT_TERN 20u
#define DT_BIN 21u

#ifndef KERF_TS
#define KERF_TS 16
#endif

/* Exact f16 -> f32 (integer operations only; a subnormal half becomes a normal float, exactly). */
inline float h2f(const uint h) {
  const uint sign = (h & 0x8000u) << 16, em = h & 0x7fffu;
  float mag;
  if (em >= 0x7c00u) mag = as_float(0x7f800000u | ((em & 0x3ffu) << 13));
  else if (em >= 0x0400u) mag = as_float((em << 13) + (112u << 23));
  else mag = (float)em * 5.9604644775390625e-8f; /* 2^-24: exact */
  return as_float(as_uint(mag) | sign);
}

/* Little-endian u16 at any byte address (group parameters need not be aligned). */
inline uint rd16(global const uchar* p) { return (uint)p[0] | ((uint)p[1] << 8); }

/* 6-bit value i of a k6 array (LSB first, value i at bit 6 i). */
inline uint get6(global const uchar* p, const ulong i) {
  const ulong bit = 6ul * i, k = bit >> 3;
  const uint sh = (uint)(bit & 7ul);
  uint v = (uint)p[k] >> sh;
  if (sh > 2u) v |= (uint)p[k + 1] << (8u - sh);
  return v & 63u;
}

/* x rounded to f32 as a value the compiler cannot fuse into a following addition (nf == 0). */
inline float rnd(const float x, const uint nf) { return as_float(as_uint(x) | nf); }

/* Element (r, c) of a weight, dequantized with the SPEC 6.4 expressions. */
inline float dq(global const uchar* w, const ulong8 wd, const uint nf, const ulong r, const uint c) {
  const uint dt = (uint)(wd.s0 & 0xfful);
  const ulong K = wd.s1;
  if (dt == DT_F32) return ((global const float*)w)[r * K + c];
  if (dt == DT_F16) return h2f(((global const ushort*)w)[r * K + c]);
  if (dt == DT_BF16) return as_float((uint)((global const ushort*)w)[r * K + c] << 16);
  const ulong g = wd.s2, ng = (K + g - 1ul) / g, i = r * ng + (ulong)c / g;
  if (dt == DT_Q8) {
    const float s = h2f(rd16(w + wd.s4 + 2ul * i));
    return (float)((global const char*)w)[r * K + c] * s;
  }
  if (dt == DT_Q4) {
    const uint b = w[r * wd.s3 + (c >> 1)];
    const uint code = (c & 1u) ? (b >> 4) : (b & 15u);
    const float s = h2f(rd16(w + wd.s4 + 2ul * i)), mn = h2f(rd16(w + wd.s5 + 2ul * i));
    return rnd((float)code * s, nf) + mn;
  }
  const uint bits = (uint)((wd.s0 >> 8) & 0xfful), k6 = (uint)((wd.s0 >> 16) & 1ul);
  global const uchar* row = w + r * wd.s3;
  float q;
  if (dt == DT_TERN) {
    uint v = (uint)row[c / 5u] % 243u;
    const uint t = c % 5u;
    const uint div = t == 0u ? 1u : t == 1u ? 3u : t == 2u ? 9u : t == 3u ? 27u : 81u;
    q = (float)((int)((v / div) % 3u) - 1);
  } else if (dt == DT_BIN) {
    q = ((row[c >> 3] >> (c & 7u)) & 1u) ? 1.0f : -1.0f;
  } else {
    const ulong bit = (ulong)c * bits;
    const ulong k = bit >> 3;
    const uint sh = (uint)(bit & 7ul);
    uint v = row[k];
    if (sh + bits > 8u) v |= (uint)row[k + 1] << 8;
    const uint u = (v >> sh) & ((1u << bits) - 1u);
    q = dt == DT_QSYM ? (float)((int)u - (1 << (bits - 1u))) : (float)u;
  }
  float s, m = 0.0f;
  if (k6) {
    const float d = h2f(rd16(w + wd.s6 + 2ul * (i >> 3)));
    s = d * (float)get6(w + wd.s4, i);
    if (dt == DT_QASYM) {
      const float dm = h2f(rd16(w + wd.s7 + 2ul * (i >> 3)));
      m = dm * (float)get6(w + wd.s5, i);
    }
  } else {
    s = h2f(rd16(w + wd.s4 + 2ul * i));
    if (dt == DT_QASYM) m = h2f(rd16(w + wd.s5 + 2ul * i));
  }
  if (dt == DT_QASYM) return rnd(s * q, nf) + rnd(m, nf);
  return s * q;
}

/* Scale s and offset m of flat group i of a quantized weight (SPEC 6.4). */
inline void gparams(global const uchar* w, const ulong8 wd, const uint dt, const ulong i, float* s, float* m) {
  if (dt == DT_Q8 || dt == DT_Q4 || !((wd.s0 >> 16) & 1ul)) {
    *s = h2f(rd16(w + wd.s4 + 2ul * i));
    *m = (dt == DT_Q4 || dt == DT_QASYM) ? h2f(rd16(w + wd.s5 + 2ul * i)) : 0.0f;
    return;
  }
  const float d = h2f(rd16(w + wd.s6 + 2ul * (i >> 3)));
  *s = d * (float)get6(w + wd.s4, i);
  *m = 0.0f;
  if (dt == DT_QASYM) {
    const float dm = h2f(rd16(w + wd.s7 + 2ul * (i >> 3)));
    *m = dm * (float)get6(w + wd.s5, i);
  }
}

inline float8 h2f8(const ushort8 h) {
  return (float8)(h2f(h.s0), h2f(h.s1), h2f(h.s2), h2f(h.s3), h2f(h.s4), h2f(h.s5), h2f(h.s6), h2f(h.s7));
}

inline float8 rnd8(const float8 x, const uint nf) { return as_float8(as_uint8(x) | (uint8)(nf)); }

/* Elements c0 .. c0 + 7 of row r (c0 a multiple of 8), the same bits as dq() element by element;
   elements at or past K are 0. Whole chunks of the code-packed dtypes decode their codes from one
   load and, inside one group, fetch its parameters once. */
inline float8 dq8(global const uchar* w, const ulong8 wd, const uint nf, const ulong r, const uint c0) {
  const uint dt = (uint)(wd.s0 & 0xfful);
  const ulong K = wd.s1;
  if ((ulong)c0 + 8ul > K || dt == DT_TERN) {
    float v[8];
    for (uint e = 0; e < 8u; ++e) v[e] = (ulong)(c0 + e) < K ? dq(w, wd, nf, r, c0 + e) : 0.0f;
    return vload8(0, v);
  }
  if (dt == DT_F32) return vload8(0, (global const float*)w + r * K + c0);
  if (dt == DT_F16) return h2f8(vload8(0, (global const ushort*)w + r * K + c0));
  if (dt == DT_BF16) return as_float8(convert_uint8(vload8(0, (global const ushort*)w + r * K + c0)) << 16);
  /* integer values q (or codes u) of the 8 elements */
  float8 q;
  if (dt == DT_Q8) {
    q = convert_float8(vload8(0, (global const char*)w + r * K + c0));
  } else if (dt == DT_Q4) {
    const uchar4 b = vload4(0, w + r * wd.s3 + (c0 >> 1));
    const uint8 u = (uint8)(b.s0 & 15u, b.s0 >> 4, b.s1 & 15u, b.s1 >> 4, b.s2 & 15u, b.s2 >> 4, b.s3 & 15u, b.s3 >> 4);
    q = convert_float8(u);
  } else if (dt == DT_BIN) {
    const uint b = w[r * wd.s3 + (c0 >> 3)];
    const uint8 bit = ((uint8)(b) >> (uint8)(0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u)) & (uint8)(1u);
    q = convert_float8(as_int8(bit * 2u) - 1);
  } else { /* qsym / qasym: the 8 codes are the b bytes at c0 * b / 8 */
    const uint bits = (uint)((wd.s0 >> 8) & 0xfful);
    global const uchar* p = w + r * wd.s3 + ((ulong)c0 * bits >> 3);
    ulong v = 0;
    for (uint k = 0; k < bits; ++k) v |= (ulong)p[k] << (8u * k);
    const ulong mask = (1ul << bits) - 1ul;
    uint u[8];
    for (uint e = 0; e < 8u; ++e) u[e] = (uint)((v >> (e * bits)) & mask);
    uint8 uu = vload8(0, u);
    q = dt == DT_QSYM ? convert_float8(as_int8(uu) - (1 << (bits - 1u))) : convert_float8(uu);
  }
  const ulong g = wd.s2, ng = (K + g - 1ul) / g, j0 = (ulong)c0 / g, j1 = ((ulong)c0 + 7ul) / g;
  const bool offs = dt == DT_Q4 || dt == DT_QASYM;
  if (j0 == j1) {
    float s, m;
    gparams(w, wd, dt, r * ng + j0, &s, &m);
    const float8 p = (float8)(s) * q;
    return offs ? rnd8(p, nf) + rnd8((float8)(m), nf) : p;
  }
  float v[8];
  const float qa[8] = {q.s0, q.s1, q.s2, q.s3, q.s4, q.s5, q.s6, q.s7};
  for (uint e = 0; e < 8u; ++e) {
    float s, m;
    gparams(w, wd, dt, r * ng + ((ulong)c0 + e) / g, &s, &m);
    v[e] = offs ? rnd(s * qa[e], nf) + rnd(m, nf) : s * qa[e];
  }
  return vload8(0, v);
}

/* x[c0 .. c0 + 7] (0 past K). */
inline float8 x8(global const float* x, const uint c0, const uint K) {
  if (c0 + 8u <= K) return vload8(0, x + c0);
  float v[8];
  for (uint e = 0; e < 8u; ++e) v[e] = c0 + e < K ? x[c0 + e] : 0.0f;
  return vload8(0, v);
}

/* This work-item's part of row r . x: the 8-element chunks lane, lane + LN, ... */
inline float dot_part(global const uchar* w, const ulong8 wd, const uint nf, const ulong r, global const float* x,
                      const uint lane, const uint LN) {
  const uint K = (uint)wd.s1;
  float8 acc = (float8)(0.0f);
  for (uint c0 = 8u * lane; c0 < K; c0 += 8u * LN) acc += dq8(w, wd, nf, r, c0) * x8(x, c0, K);
  const float4 a4 = acc.lo + acc.hi;
  const float2 a2 = a4.lo + a4.hi;
  return a2.x + a2.y;
}

/* Sums of the LN-lane segments of red (one per row of a multi-row work-group; LN a power of two);
   red[row * LN] gets each. Work-group-wide barriers: every work-item calls it. */
inline void reduce_rows(local float* red, const uint lane, const uint LN, const uint idx) {
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint h = LN >> 1; h > 0u; h >>= 1) {
    if (lane < h) red[idx] += red[idx + h];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
}

/* Tree sum of red[0..L) (L a power of two); every work-item gets the result. */
inline float reduce_sum(local float* red, const uint lid, const uint L) {
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint h = L >> 1; h > 0u; h >>= 1) {
    if (lid < h) red[lid] += red[lid + h];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const float r = red[0];
  barrier(CLK_LOCAL_MEM_FENCE);
  return r;
}

inline float reduce_max(local float* red, const uint lid, const uint L) {
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint h = L >> 1; h > 0u; h >>= 1) {
    if (lid < h) red[lid] = fmax(red[lid], red[lid + h]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const float r = red[0];
  barrier(CLK_LOCAL_MEM_FENCE);
  return r;
}

/* out[t, c0 .. c0 + 7] = table[tok[t], c0 ..]; global (ceil(D / 8), T). */
kernel void k_embedding(global const int* tok, global const uchar* w, const ulong8 wd, const uint nf,
                        global float* out, const uint D) {
  const uint c0 = 8u * (uint)get_global_id(0), t = get_global_id(1);
  const float8 v = dq8(w, wd, nf, (ulong)tok[t], c0);
  global float* o = out + (ulong)t * D + c0;
  if (c0 + 8u <= D) {
    vstore8(v, 0, o);
  } else {
    const float a[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
    for (uint e = 0; c0 + e < D; ++e) o[e] = a[e];
  }
}

/* out[t, :] = wt * (x[t, :] * (1 / sqrt(mean(x^2) + eps))); one work-group per row t. */
kernel void k_rmsnorm(global const float* x, global const float* wt, global float* out, const uint D,
                      const float eps, local float* red) {
  const uint t = get_group_id(0), lid = get_local_id(0), L = get_local_size(0);
  global const float* xr = x + (ulong)t * D;
  float ss = 0.0f;
  for (uint i = lid; i < D; i += L) ss += xr[i] * xr[i];
  red[lid] = ss;
  const float sum = reduce_sum(red, lid, L);
  const float inv = 1.0f / sqrt(sum / (float)D + eps);
  global float* o = out + (ulong)t * D;
  for (uint i = lid; i < D; i += L) o[i] = wt[i] * (xr[i] * inv);
}

/* y[t, r] = W[r, :] . x[t, :]. Work-group (LN, RW): RW rows of LN lanes each; global
   (LN, rows rounded up to RW, T). */
kernel void k_gemv(global const uchar* w, const ulong8 wd, const uint nf, global const float* x, global float* y,
                   const uint N, local float* red) {
  const uint lane = get_local_id(0), LN = get_local_size(0), idx = get_local_id(1) * LN + lane;
  const uint r = get_global_id(1), t = get_global_id(2);
  const uint K = (uint)wd.s1;
  red[idx] = r < N ? dot_part(w, wd, nf, r, x + (ulong)t * K, lane, LN) : 0.0f;
  reduce_rows(red, lane, LN, idx);
  if (lane == 0u && r < N) y[(ulong)t * N + r] = red[idx];
}

/* GatedFFN first half, fused: h[t, r] = silu(W1[r] . x[t]) * (W3[r] . x[t]); layout as k_gemv. */
kernel void k_ffn_gate(global const uchar* w1, const ulong8 wd1, global const uchar* w3, const ulong8 wd3,
                       const uint nf, global const float* x, global float* h, const uint F, local float* red) {
  const uint lane = get_local_id(0), LN = get_local_size(0), idx = get_local_id(1) * LN + lane;
  const uint r = get_global_id(1), t = get_global_id(2);
  const uint K = (uint)wd1.s1;
  global const float* xt = x + (ulong)t * K;
  red[idx] = r < F ? dot_part(w1, wd1, nf, r, xt, lane, LN) : 0.0f;
  reduce_rows(red, lane, LN, idx);
  const float a = red[idx];
  barrier(CLK_LOCAL_MEM_FENCE);
  red[idx] = r < F ? dot_part(w3, wd3, nf, r, xt, lane, LN) : 0.0f;
  reduce_rows(red, lane, LN, idx);
  if (lane == 0u && r < F) h[(ulong)t * F + r] = a / (1.0f + exp(-a)) * red[idx];
}

/* y[t, n] = W[n, :] . x[t, :] by KERF_TS x KERF_TS tiles of (n, t), k in steps of KS = 32: the
   weight tile is dequantized once per step (8-element chunks, dq8) and serves KERF_TS tokens.
   Local size (KERF_TS, KERF_TS); work-item (lx, ly) computes y[t0 + ly, n0 + lx]. */
#define KS 32u
kernel void k_gemm(global const uchar* w, const ulong8 wd, const uint nf, global const float* x, global float* y,
                   const uint N, const uint T) {
  local float Ws[KERF_TS][KS + 1];
  local float Xs[KERF_TS][KS + 1];
  const uint lx = get_local_id(0), ly = get_local_id(1), f = ly * KERF_TS + lx;
  const uint n0 = get_group_id(0) * KERF_TS, t0 = get_group_id(1) * KERF_TS;
  const uint K = (uint)wd.s1;
  float acc = 0.0f;
  for (uint k0 = 0; k0 < K; k0 += KS) {
    if (f < KERF_TS * (KS / 8u)) { /* one 8-element chunk of the weight tile */
      const uint row = f / (KS / 8u), c = 8u * (f % (KS / 8u));
      const float8 v = n0 + row < N ? dq8(w, wd, nf, (ulong)(n0 + row), k0 + c) : (float8)(0.0f);
      local float* o = &Ws[row][c];
      o[0] = v.s0; o[1] = v.s1; o[2] = v.s2; o[3] = v.s3; o[4] = v.s4; o[5] = v.s5; o[6] = v.s6; o[7] = v.s7;
    }
    for (uint idx = f; idx < KERF_TS * KS; idx += KERF_TS * KERF_TS) {
      const uint tt = idx / KS, kk = idx % KS;
      Xs[tt][kk] = (t0 + tt < T && k0 + kk < K) ? x[(ulong)(t0 + tt) * K + k0 + kk] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint k = 0; k < KS; ++k) acc += Xs[ly][k] * Ws[lx][k];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const uint n = n0 + lx, t = t0 + ly;
  if (n < N && t < T) y[(ulong)t * N + n] = acc;
}

/* a[i] = silu(a[i]) * b[i]. */
kernel void k_silu_mul(global float* a, global const float* b) {
  const ulong i = get_global_id(0);
  const float z = a[i];
  a[i] = z / (1.0f + exp(-z)) * b[i];
}

kernel void k_add(global const float* a, global const float* b, global float* out) {
  const ulong i = get_global_id(0);
  out[i] = a[i] + b[i];
}

/* RoPE from the host's table (row p: Dh/2 cosines, then Dh/2 sines); global (heads * Dh/2, T). */
kernel void k_rotary(global const float* x, global float* out, global const float* table, const uint width,
                     const uint Dh, const uint interleaved, const uint pos0, const uint nf) {
  const uint id = get_global_id(0), t = get_global_id(1);
  const uint half_dh = Dh >> 1, h = id / half_dh, i = id % half_dh;
  global const float* row = table + (ulong)(pos0 + t) * Dh;
  const float c = row[i], s = row[half_dh + i];
  const ulong base = (ulong)t * width + (ulong)h * Dh;
  const uint ia = interleaved ? 2u * i : i, ib = interleaved ? 2u * i + 1u : i + half_dh;
  const float a = x[base + ia], b = x[base + ib];
  out[base + ia] = rnd(a * c, nf) - rnd(b * s, nf); /* the CPU's rounded products */
  out[base + ib] = rnd(a * s, nf) + rnd(b * c, nf);
}

/* KV cache, head-major: element d of KV head g at position p is at (g * n_ctx + p) * Dh + d.
   Stores rows [0, T) of k, v ([T, G * Dh]) at positions pos0..; global (G * Dh, T). */
kernel void k_kv_store(global const float* k, global const float* v, global float* kc, global float* vc,
                       const uint G, const uint Dh, const uint n_ctx, const uint pos0) {
  const uint e = get_global_id(0), t = get_global_id(1);
  const uint g = e / Dh, d = e % Dh;
  const ulong at = ((ulong)g * n_ctx + pos0 + t) * Dh + d, from = (ulong)t * G * Dh + e;
  kc[at] = k[from];
  vc[at] = v[from];
}

/* out[t, h*Dh ..] = softmax(q[t, h] . K^T * scale) V over keys [0, n_keys); one work-group per (t, h),
   keys in chunks of CH scores held in local memory, merged with a running max (the usual online
   softmax; one chunk when n_keys <= CH, then it is the plain two-pass softmax). */
kernel void k_attention(global const float* q, global const float* kc, global const float* vc, global float* out,
                        const uint T, const uint pos0, const uint H, const uint G, const uint Dh, const uint n_ctx,
                        const float scale, const uint causal, const uint CH, local float* lq, local float* lo,
                        local float* red, local float* sc) {
  const uint t = get_group_id(0), h = get_group_id(1), lid = get_local_id(0), L = get_local_size(0);
  const uint g = h / (H / G);
  global const float* Kh = kc + (ulong)g * n_ctx * Dh;
  global const float* Vh = vc + (ulong)g * n_ctx * Dh;
  const uint n_keys = causal ? pos0 + t + 1u : pos0 + T;
  global const float* qh = q + (ulong)t * H * Dh + (ulong)h * Dh;
  for (uint d = lid; d < Dh; d += L) {
    lq[d] = qh[d];
    lo[d] = 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  float M = -INFINITY, S = 0.0f;
  for (uint c0 = 0; c0 < n_keys; c0 += CH) {
    const uint n = min(CH, n_keys - c0);
    float mx = -INFINITY;
    for (uint j = lid; j < n; j += L) {
      global const float* kr = Kh + (ulong)(c0 + j) * Dh;
      float dt = 0.0f;
      for (uint d = 0; d < Dh; ++d) dt += lq[d] * kr[d];
      const float sj = dt * scale;
      sc[j] = sj;
      mx = fmax(mx, sj);
    }
    red[lid] = mx;
    const float Mn = fmax(M, reduce_max(red, lid, L));
    float ps = 0.0f;
    for (uint j = lid; j < n; j += L) {
      const float e = exp(sc[j] - Mn);
      sc[j] = e;
      ps += e;
    }
    red[lid] = ps;
    const float csum = reduce_sum(red, lid, L); /* its barriers also publish sc */
    const float alpha = exp(M - Mn);             /* 0 on the first chunk (M = -inf) */
    S = S * alpha + csum;
    for (uint d = lid; d < Dh; d += L) {
      float acc = 0.0f;
      for (uint j = 0; j < n; ++j) acc += sc[j] * Vh[(ulong)(c0 + j) * Dh + d];
      lo[d] = lo[d] * alpha + acc;
    }
    M = Mn;
    barrier(CLK_LOCAL_MEM_FENCE); /* sc is rewritten by the next chunk */
  }
  const float inv = 1.0f / S;
  global float* o = out + (ulong)t * H * Dh + (ulong)h * Dh;
  for (uint d = lid; d < Dh; d += L) o[d] = lo[d] * inv;
}
)CLC";

}  // namespace kerf::rt::gpu
