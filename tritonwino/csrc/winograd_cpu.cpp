// Fused sparse / dense Winograd convolution on the CPU (fp32), the "cpu" backend of tritonwino.
//
// tritonwino/_cpu_path.py generates the block marked TW_GENERATED (tile sizes and the constant-
// folded 1-D transforms of one F(m, r) point set), prepends it and compiles this file at first use
// with -O3 -march=native, so the vector width below is the build machine's own.
//
// Work is cut into blocks of L consecutive tiles (t = (image, tile row, tile column), row-major; one
// tile per SIMD lane). For one block:
//   1. input transform: per input channel, gather the n x n windows of the L tiles (masked at the
//      image border: that is the zero padding) and apply B^T . B with the constants folded in;
//      V_block is (P, C) vectors of L lanes, a few hundred KB that stay in cache;
//   2. per output-channel group and KR channels at a time: for every position p, walk the packed
//      kept-channel list of (p, group) and accumulate acc[k] += V_block[p][c] * q[p][c][k] (the
//      broadcast weight times a vector of L tiles) - no gathered copy of V, no padding slots;
//   3. output transform A^T . A of those KR channels right away (+ bias, ReLU), scattered into y:
//      M is never stored beyond one (P x KR x L) scratch.
// Threads: with many blocks every thread takes whole blocks (V stays in its own cache); with few
// blocks (small images, batch 1) all threads first transform the input together, then share the
// (block, group) units.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int L = 16;      // lanes of a vector: tiles per block
constexpr int KR_MAX = 16;  // accumulators per micro-kernel (32 zmm registers)
#else
constexpr int L = 8;
constexpr int KR_MAX = 8;  // 16 ymm registers
#endif

typedef float VF __attribute__((vector_size(L * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(L * sizeof(int32_t))));
typedef uint32_t LaneMask;  // bit l: lane l

// TW_GENERATED
@@GENERATED@@
// end TW_GENERATED

constexpr int P = N * N;
static_assert(M >= 1 && N >= M, "bad tile");

// Multi-row blocks: vector k (positions 16 k ..) of a block's row segment comes from block row j
// through one masked load / store at offset `off` from that row's segment start.
struct SegPiece {
  int k, j;
  int64_t off;
  uint32_t mask;
};
constexpr int MAX_PIECES = 2 * L + 16;

struct Geo {
  int64_t nb, c, h, w, sxn, sxc, sxh, sxw, ph, pw;
  int64_t k, gk, g;
  int64_t ho, wo, syn, syk, syh, syw;
  int64_t tiles_h, tiles_w, t;
  int rpb;  // tile rows per multi-row block (0: none)
  int n_in, n_out;
  SegPiece in_plan[MAX_PIECES], out_plan[MAX_PIECES];
};

// Where the L tiles of one block read and write, and which lanes are inside the image.
//  * flat blocks: L consecutive tiles t0 .. t0 + L - 1 (they may span tile rows and images); the
//    n x n windows are gathered and the m x m outputs scattered lane by lane (any strides);
//  * row blocks (AVX-512, F(2,r) / F(4,r), unit W stride of x and y): L consecutive tiles of one
//    tile row; each window row is a few contiguous (masked) loads split into the n columns by
//    permutes, and each output row is interleaved back and stored contiguously;
//  * multi-row blocks (the same for F(4,r), images less than L/2 tiles wide): rpb whole tile rows, laid
//    side by side in the lanes; columns 0..m-1 of the windows come from masked row loads and
//    permutes, the last r-1 columns (which cross into the next tile) are gathered.
constexpr int NV_IN = (L * M + N - M + 15) / 16;  // vectors of one input row segment (row blocks)
constexpr int NV_OUT = (L * M + 15) / 16;            // vectors of one output row segment
struct Block {
  bool rows;
  int nt;                  // valid lanes (the last block may be partial)
  // flat blocks
  int64_t xbase, ybase;    // element offsets of lane 0's tile origin in x / y (may point into the padding)
  bool x32, y32;           // every relative offset below fits int32 (else the scalar path)
  int32_t xrel[L], yrel[L];
  int64_t xoff[L], yoff[L];
  LaneMask row_in[N], col_in[N];    // lanes whose input row / column a of the window is inside x
  LaneMask orow_in[M], ocol_in[M];  // lanes whose output row / column u of the tile is inside y
  // multi-row blocks: rows in this block, and per row the input row of window row 0, the output
  // row, and the offsets of their segment starts (image, row, column -pw / 0) in x and y
  int rpb;
  int64_t mr_h0[L], mr_oh0[L], mr_x[L], mr_y[L];
  // row blocks
  int64_t hrow0, orow0;    // input row of window row 0; output row of tile row 0
  int64_t xrow0, yrow0;    // offsets of (image, hrow0, first window column) in x and (image, orow0, first output column) in y
  uint32_t in_mask[NV_IN], out_mask[NV_OUT];  // positions of a row segment inside x / y
};

inline uint32_t range_mask(int64_t lo, int64_t hi) {  // bits [lo, hi) of 16, clipped
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, 16);
  return hi <= lo ? 0u : (uint32_t)(((1u << (hi - lo)) - 1u) << lo) & 0xffffu;
}

inline void make_block(const Geo& g, int64_t t0, Block& b, int lanes = L) {
  b.rows = false;
  b.rpb = 0;
  b.nt = (int)std::min<int64_t>(lanes, g.t - t0);
  for (int a = 0; a < N; ++a) b.row_in[a] = b.col_in[a] = 0;
  for (int u = 0; u < M; ++u) b.orow_in[u] = b.ocol_in[u] = 0;
  const int64_t per_img = g.tiles_h * g.tiles_w;
  int64_t hs[L], ws[L], ohs[L], ows[L];
  for (int l = 0; l < L; ++l) {
    int64_t t = std::min(t0 + l, g.t - 1);
    int64_t img = t / per_img, rem = t % per_img;
    int64_t ty = rem / g.tiles_w, tx = rem % g.tiles_w;
    hs[l] = ty * M - g.ph;
    ws[l] = tx * M - g.pw;
    ohs[l] = ty * M;
    ows[l] = tx * M;
    b.xoff[l] = img * g.sxn + hs[l] * g.sxh + ws[l] * g.sxw;
    b.yoff[l] = img * g.syn + ohs[l] * g.syh + ows[l] * g.syw;
    if (l >= b.nt) continue;
    for (int a = 0; a < N; ++a) {
      if (hs[l] + a >= 0 && hs[l] + a < g.h) b.row_in[a] |= 1u << l;
      if (ws[l] + a >= 0 && ws[l] + a < g.w) b.col_in[a] |= 1u << l;
    }
    for (int u = 0; u < M; ++u) {
      if (ohs[l] + u < g.ho) b.orow_in[u] |= 1u << l;
      if (ows[l] + u < g.wo) b.ocol_in[u] |= 1u << l;
    }
  }
  b.xbase = b.xoff[0];
  b.ybase = b.yoff[0];
  // Relative offsets plus the largest in-window offset must fit int32 for the vector gathers.
  const int64_t lim = INT32_MAX;
  int64_t xwin = (N - 1) * (llabs(g.sxh) + llabs(g.sxw)), ywin = (M - 1) * (llabs(g.syh) + llabs(g.syw));
  b.x32 = b.y32 = true;
  for (int l = 0; l < L; ++l) {
    if (llabs(b.xoff[l] - b.xbase) + xwin >= lim) b.x32 = false;
    if (llabs(b.yoff[l] - b.ybase) + ywin >= lim) b.y32 = false;
  }
  for (int l = 0; l < L; ++l) {
    b.xrel[l] = (int32_t)(b.x32 ? b.xoff[l] - b.xbase : 0);
    b.yrel[l] = (int32_t)(b.y32 ? b.yoff[l] - b.ybase : 0);
  }
}



inline void make_multirow_block(const Geo& g, int64_t bi, Block& b) {
  const int64_t tr0 = bi * g.rpb;  // first tile row (images flattened)
  const int rows = (int)std::min<int64_t>(g.rpb, g.nb * g.tiles_h - tr0);
  make_block(g, tr0 * g.tiles_w, b, rows * (int)g.tiles_w);  // lanes = the block's tiles, consecutive
  b.rows = true;
  b.rpb = rows;
  for (int j = 0; j < rows; ++j) {
    const int64_t img = (tr0 + j) / g.tiles_h, ty = (tr0 + j) % g.tiles_h;
    b.mr_h0[j] = ty * M - g.ph;
    b.mr_oh0[j] = ty * M;
    b.mr_x[j] = img * g.sxn + b.mr_h0[j] * g.sxh - g.pw;
    b.mr_y[j] = img * g.syn + b.mr_oh0[j] * g.syh;
  }
}

// The pieces of a multi-row block's row segments (the same for every block of a call).
inline void make_plans(Geo& g) {
  const int64_t wseg = g.tiles_w * M;
  g.n_in = g.n_out = 0;
  for (int k = 0; k < (L * M) / 16; ++k)
    for (int j = 0; j < g.rpb; ++j) {
      const int64_t lo = j * wseg - 16 * k;  // lane of position 0 of row j in vector k
      const uint32_t in_row = range_mask(lo, lo + wseg);
      if (!in_row || g.n_in >= MAX_PIECES) continue;
      g.in_plan[g.n_in++] = {k, j, -lo, in_row & range_mask(lo + g.pw, lo + g.pw + g.w)};
      g.out_plan[g.n_out++] = {k, j, -lo, in_row & range_mask(lo, lo + g.wo)};
    }
}

inline void make_row_block(const Geo& g, int64_t bi, Block& b) {
  const int64_t per_row = (g.tiles_w + L - 1) / L;
  const int64_t row = bi / per_row, tx0 = (bi % per_row) * L;
  const int64_t img = row / g.tiles_h, ty = row % g.tiles_h;
  b.rows = true;
  b.rpb = 0;
  b.nt = (int)std::min<int64_t>(L, g.tiles_w - tx0);
  b.hrow0 = ty * M - g.ph;
  b.orow0 = ty * M;
  const int64_t col0 = tx0 * M - g.pw;
  b.xrow0 = img * g.sxn + b.hrow0 * g.sxh + col0;
  b.yrow0 = img * g.syn + b.orow0 * g.syh + tx0 * M;
  const int64_t in_len = (int64_t)b.nt * M + N - M;
  for (int j = 0; j < NV_IN; ++j)  // inside the image and inside the segment
    b.in_mask[j] = range_mask(-(col0 + 16 * j), std::min(g.w - (col0 + 16 * j), in_len - 16 * j));
  const int64_t out_len = std::min<int64_t>((int64_t)b.nt * M, g.wo - tx0 * M);
  for (int j = 0; j < NV_OUT; ++j) b.out_mask[j] = range_mask(0, out_len - 16 * j);
}

// ---- lane-masked gather / scatter ------------------------------------------------------------
inline VF gather(const float* base, const Block& b, int64_t off, LaneMask mask) {
  // base + xbase + xrel[l] + off for the lanes in mask, 0 elsewhere (the zero padding)
  VF out = {};
  if (!mask) return out;
#if defined(__AVX512F__)
  if (b.x32) {
    VI idx;
    memcpy(&idx, b.xrel, sizeof(idx));
    idx += (int32_t)off;
    __m512 r = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)mask, (__m512i)idx,
                                        base + b.xbase, 4);
    return (VF)r;
  }
#elif defined(__AVX2__)
  if (b.x32) {
    VI idx;
    memcpy(&idx, b.xrel, sizeof(idx));
    idx += (int32_t)off;
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i mv = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)mask), bits), bits);
    __m256 r = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base + b.xbase, (__m256i)idx,
                                        _mm256_castsi256_ps(mv), 4);
    return (VF)r;
  }
#endif
  for (int l = 0; l < L; ++l)
    if (mask >> l & 1u) out[l] = base[b.xoff[l] + off];
  return out;
}

inline void scatter(float* base, const Block& b, int64_t off, LaneMask mask, VF v) {
  if (!mask) return;
#if defined(__AVX512F__)
  if (b.y32) {
    VI idx;
    memcpy(&idx, b.yrel, sizeof(idx));
    idx += (int32_t)off;
    _mm512_mask_i32scatter_ps(base + b.ybase, (__mmask16)mask, (__m512i)idx, (__m512)v, 4);
    return;
  }
#endif
  for (int l = 0; l < L; ++l)
    if (mask >> l & 1u) base[b.yoff[l] + off] = v[l];
}

// ---- row blocks: split contiguous row segments into window columns and back ------------------
#if defined(__AVX512F__)
constexpr bool ROW_BLOCKS = (M == 2 || M == 4) && N - M <= M;

inline const float* offset_ptr(const float* p, int64_t off) {  // p + off, off may point before p's array
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(p) + (uintptr_t)(off * (int64_t)sizeof(float)));
}
inline float* offset_ptr(float* p, int64_t off) {
  return reinterpret_cast<float*>(reinterpret_cast<uintptr_t>(p) + (uintptr_t)(off * (int64_t)sizeof(float)));
}

// d[col][l] = seg[l * M + col] for col < M, where seg is the row segment in v[0..M).
inline void split_low_columns(const __m512* v, VF* d) {
  if constexpr (M == 4) {
    const __m512i base = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
      const __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32(b));
      __m512 lo = _mm512_permutex2var_ps(v[0], idx, v[1]), hi = _mm512_permutex2var_ps(v[2], idx, v[3]);
      d[b] = (VF)_mm512_shuffle_f32x4(lo, hi, 0x44);
    }
  } else {
    const __m512i base = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
#pragma GCC unroll 2
    for (int b = 0; b < 2; ++b)
      d[b] = (VF)_mm512_permutex2var_ps(v[0], _mm512_add_epi32(base, _mm512_set1_epi32(b)), v[1]);
  }
}

// d[col][l] = seg[l * M + col] for col < N, where seg is the row segment in v[0..NV_IN).
inline void split_columns(const __m512* v, VF* d) {
  split_low_columns(v, d);
  // columns M .. N-1 are columns 0 .. N-M-1 of the next tile: shift by one lane, take the last from v
  const __m512i shift = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
#pragma GCC unroll 8
  for (int b = M; b < N; ++b)
    d[b] = (VF)_mm512_permutex2var_ps((__m512)d[b - M],
                                      _mm512_mask_mov_epi32(shift, 0x8000, _mm512_set1_epi32(16 + b - M)),
                                      v[(L * M) / 16]);
}

// out[j] (positions 16 j ..) of the row segment whose tile l, column u is y[u][l].
inline void merge_columns(const VF* y, __m512* out) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  if constexpr (M == 2) {
    out[0] = _mm512_permutex2var_ps((__m512)y[0], lo, (__m512)y[1]);
    out[1] = _mm512_permutex2var_ps((__m512)y[0], hi, (__m512)y[1]);
  } else {
    const __m512i q0 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), q1 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    __m512d a = _mm512_castps_pd(_mm512_permutex2var_ps((__m512)y[0], lo, (__m512)y[1]));
    __m512d b = _mm512_castps_pd(_mm512_permutex2var_ps((__m512)y[2], lo, (__m512)y[3]));
    __m512d a2 = _mm512_castps_pd(_mm512_permutex2var_ps((__m512)y[0], hi, (__m512)y[1]));
    __m512d b2 = _mm512_castps_pd(_mm512_permutex2var_ps((__m512)y[2], hi, (__m512)y[3]));
    out[0] = _mm512_castpd_ps(_mm512_permutex2var_pd(a, q0, b));
    out[1] = _mm512_castpd_ps(_mm512_permutex2var_pd(a, q1, b));
    out[2] = _mm512_castpd_ps(_mm512_permutex2var_pd(a2, q0, b2));
    out[3] = _mm512_castpd_ps(_mm512_permutex2var_pd(a2, q1, b2));
  }
}
#else
constexpr bool ROW_BLOCKS = false;
#endif

// d[a][col]: the n x n windows of the block's tiles (zeros in the padding).
inline void load_windows(const Geo& g, const Block& b, const float* xc, VF (&d)[N][N]) {
#if defined(__AVX512F__)
  if constexpr (ROW_BLOCKS) {
    if (b.rows && b.rpb > 0) {
#pragma GCC unroll 16
      for (int a = 0; a < N; ++a) {
        __m512 v[(L * M) / 16];
#pragma GCC unroll 8
        for (int k = 0; k < (L * M) / 16; ++k) v[k] = _mm512_setzero_ps();
        for (int i = 0; i < g.n_in; ++i) {
          const SegPiece& pc = g.in_plan[i];
          const int64_t row = b.mr_h0[pc.j] + a;
          if (pc.j >= b.rpb || row < 0 || row >= g.h) continue;
          v[pc.k] = _mm512_mask_loadu_ps(v[pc.k], (__mmask16)pc.mask, offset_ptr(xc, b.mr_x[pc.j] + a * g.sxh + pc.off));
        }
        split_low_columns(v, d[a]);
#pragma GCC unroll 8
        for (int col = M; col < N; ++col)  // these cross into the next tile, past a row's end: gathered
          d[a][col] = gather(xc, b, a * g.sxh + col * g.sxw, b.row_in[a] & b.col_in[col]);
      }
      return;
    }
    if (b.rows) {
#pragma GCC unroll 16
      for (int a = 0; a < N; ++a) {
        const int64_t row = b.hrow0 + a;
        if (row < 0 || row >= g.h) {
#pragma GCC unroll 16
          for (int col = 0; col < N; ++col) d[a][col] = VF{};
          continue;
        }
        const float* xr = offset_ptr(xc, b.xrow0 + a * g.sxh);
        __m512 v[NV_IN];
#pragma GCC unroll 8
        for (int j = 0; j < NV_IN; ++j) v[j] = _mm512_maskz_loadu_ps((__mmask16)b.in_mask[j], offset_ptr(xr, 16 * j));
        split_columns(v, d[a]);
      }
      return;
    }
  }
#endif
#pragma GCC unroll 16
  for (int a = 0; a < N; ++a)
#pragma GCC unroll 16
    for (int col = 0; col < N; ++col)
      d[a][col] = gather(xc, b, a * g.sxh + col * g.sxw, b.row_in[a] & b.col_in[col]);
}

// y[u][v] (lanes = tiles) into output channel yk.
inline void store_tiles(const Geo& g, const Block& b, float* yk, const VF (&y)[M][M]) {
#if defined(__AVX512F__)
  if constexpr (ROW_BLOCKS) {
    if (b.rows && b.rpb > 0) {
#pragma GCC unroll 8
      for (int u = 0; u < M; ++u) {
        __m512 out[NV_OUT];
        merge_columns(y[u], out);
        for (int i = 0; i < g.n_out; ++i) {
          const SegPiece& pc = g.out_plan[i];
          if (pc.j >= b.rpb || b.mr_oh0[pc.j] + u >= g.ho) continue;
          _mm512_mask_storeu_ps(offset_ptr(yk, b.mr_y[pc.j] + u * g.syh + pc.off), (__mmask16)pc.mask, out[pc.k]);
        }
      }
      return;
    }
    if (b.rows) {
#pragma GCC unroll 8
      for (int u = 0; u < M; ++u) {
        if (b.orow0 + u >= g.ho) break;
        __m512 out[NV_OUT];
        merge_columns(y[u], out);
        float* yr = yk + b.yrow0 + u * g.syh;
#pragma GCC unroll 8
        for (int j = 0; j < NV_OUT; ++j) _mm512_mask_storeu_ps(yr + 16 * j, (__mmask16)b.out_mask[j], out[j]);
      }
      return;
    }
  }
#endif
#pragma GCC unroll 8
  for (int u = 0; u < M; ++u)
#pragma GCC unroll 8
    for (int v = 0; v < M; ++v) scatter(yk, b, u * g.syh + v * g.syw, b.orow_in[u] & b.ocol_in[v], y[u][v]);
}

// ---- stage 1: V_block[p][c] = (B^T X B)[p] for the block's L tiles -------------------------
inline void input_transform(const Geo& g, const Block& b, const float* x, int64_t c, VF* v, int64_t pstride) {
  VF d[N][N];
  load_windows(g, b, x + c * g.sxc, d);
  VF e[N][N];  // e[i][col] = sum_a BT[i][a] d[a][col]
#pragma GCC unroll 16
  for (int col = 0; col < N; ++col) {
    VF t[N], o[N];
#pragma GCC unroll 16
    for (int a = 0; a < N; ++a) t[a] = d[a][col];
    bt_1d(t, o);
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) e[i][col] = o[i];
  }
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    VF o[N];
    bt_1d(e[i], o);
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j) v[(i * N + j) * pstride] = o[j];
  }
}

// ---- stages 2 + 3 for one (block, group) ------------------------------------------------------
template <int GK, bool DENSE>
void group_out(const Geo& g, const Block& b, const VF* vb, int64_t grp, const float* values,
               const int32_t* indices, const int32_t* offsets, const float* bias, bool relu, float* y, VF* mb) {
  constexpr int KR = GK < KR_MAX ? GK : KR_MAX;
  const int64_t C = g.c;
  for (int kc = 0; kc < GK / KR; ++kc) {
    const int64_t k0 = grp * GK + kc * KR;
    if (k0 >= g.k) break;
    for (int p = 0; p < P; ++p) {
      const int64_t pg = p * g.g + grp;
      const int32_t s0 = offsets[pg], s1 = offsets[pg + 1];
      const VF* vp = vb + p * C;
      VF acc[KR];
#pragma GCC unroll 16
      for (int k = 0; k < KR; ++k) acc[k] = VF{};
      const float* w = values + (int64_t)s0 * GK + kc * KR;
      for (int32_t s = s0; s < s1; ++s, w += GK) {
        const VF vv = vp[DENSE ? (s - s0) : indices[s]];
#pragma GCC unroll 16
        for (int k = 0; k < KR; ++k) acc[k] += vv * w[k];
      }
#pragma GCC unroll 16
      for (int k = 0; k < KR; ++k) mb[p * KR + k] = acc[k];
    }
    const int kmax = (int)std::min<int64_t>(KR, g.k - k0);
    for (int k = 0; k < kmax; ++k) {
      VF f[M][N];  // f[u][j] = sum_i AT[u][i] M[i][j]
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        VF col[N], o[M];
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) col[i] = mb[(i * N + j) * KR + k];
        at_1d(col, o);
#pragma GCC unroll 16
        for (int u = 0; u < M; ++u) f[u][j] = o[u];
      }
      const float bk = bias ? bias[k0 + k] : 0.0f;
      VF yt[M][M];
#pragma GCC unroll 16
      for (int u = 0; u < M; ++u) {
        at_1d(f[u], yt[u]);
#pragma GCC unroll 16
        for (int vv = 0; vv < M; ++vv) {
          VF r = yt[u][vv] + bk;
          if (relu) r = r < 0.0f ? VF{} : r;  // NaN stays NaN, as torch.relu
          yt[u][vv] = r;
        }
      }
      store_tiles(g, b, y + (k0 + k) * g.syk, yt);
    }
  }
}

// ---- scratch -----------------------------------------------------------------------------------
// Grow-only, per OS thread: no allocation (and no page faults) in the steady state.
struct Scratch {
  VF* ptr = nullptr;
  size_t n = 0;
  VF* get(size_t want) {
    if (want > n) {
      free(ptr);
      ptr = static_cast<VF*>(aligned_alloc(64, ((want * sizeof(VF) + 63) / 64) * 64));
      n = ptr ? want : 0;
    }
    return ptr;
  }
  ~Scratch() { free(ptr); }
};
thread_local Scratch tl_private, tl_shared;

inline int num_threads_now() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

template <int GK, bool DENSE>
int run(const Geo& g, const float* x, const float* values, const int32_t* indices, const int32_t* offsets,
        const float* bias, bool relu, float* y, int nthreads) {
  constexpr int KR = GK < KR_MAX ? GK : KR_MAX;
  // Row blocks where a tile row fills at least half the lanes, multi-row blocks for narrower
  // images (unit W strides, F(2,r) / F(4,r) on AVX-512), flat blocks otherwise.
  const bool contiguous_rows = ROW_BLOCKS && g.sxw == 1 && g.syw == 1;
  const bool rows = contiguous_rows && g.tiles_w >= L / 2;
  const bool multirow = contiguous_rows && !rows && g.rpb > 0;
  const int64_t nblk = rows ? g.nb * g.tiles_h * ((g.tiles_w + L - 1) / L)
                       : multirow ? (g.nb * g.tiles_h + g.rpb - 1) / g.rpb
                                  : (g.t + L - 1) / L;
  auto block = [&](int64_t bi, Block& b) {
    if (rows)
      make_row_block(g, bi, b);
    else if (multirow)
      make_multirow_block(g, bi, b);
    else
      make_block(g, bi * L, b);
  };
  const int64_t C = g.c;
  const size_t priv = (size_t)P * C + (size_t)P * KR;
#ifdef _OPENMP
  if (nthreads > 0 && omp_get_max_threads() != nthreads) omp_set_num_threads(nthreads);
#endif
  const int nt = num_threads_now();
  int err = 0;
  if (nt <= 1 || nblk >= 4 * nt) {
    // Every thread takes whole blocks: its V_block never leaves its cache.
#pragma omp parallel
    {
      VF* vb = tl_private.get(priv);
      if (!vb) {
#pragma omp atomic write
        err = 1;
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t bi = 0; bi < nblk; ++bi) {
        if (!vb) continue;
        Block b;
        block(bi, b);
        for (int64_t c = 0; c < C; ++c) input_transform(g, b, x, c, vb + c, C);
        for (int64_t grp = 0; grp < g.g; ++grp)
          group_out<GK, DENSE>(g, b, vb, grp, values, indices, offsets, bias, relu, y, vb + (size_t)P * C);
      }
    }
    return err;
  }
  // Few blocks: transform the input together, then share the (block, group) units.
  VF* vs = tl_shared.get((size_t)nblk * P * C);
  if (!vs) return 1;
  Block* blocks = static_cast<Block*>(malloc(sizeof(Block) * nblk));
  if (!blocks) return 1;
  for (int64_t bi = 0; bi < nblk; ++bi) block(bi, blocks[bi]);
#pragma omp parallel
  {
    VF* mb = tl_private.get((size_t)P * KR);
    if (!mb) {
#pragma omp atomic write
      err = 1;
    }
#pragma omp for schedule(static)
    for (int64_t u = 0; u < nblk * C; ++u) {
      const int64_t bi = u / C, c = u % C;
      input_transform(g, blocks[bi], x, c, vs + (size_t)bi * P * C + c, C);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < nblk * g.g; ++u) {
      if (!mb) continue;
      const int64_t bi = u / g.g, grp = u % g.g;
      group_out<GK, DENSE>(g, blocks[bi], vs + (size_t)bi * P * C, grp, values, indices, offsets, bias, relu, y,
                           mb);
    }
  }
  free(blocks);
  return err;
}

}  // namespace

extern "C" {

// Lanes per vector (tiles per block) this build uses.
int tw_lanes() { return L; }
int tw_tile_m() { return M; }
int tw_tile_r() { return R; }

// y = conv(x, Q) + bias (ReLU), y preallocated with strides sy*. values: (slots, gk) fp32; indices
// int32 kept channels (ignored when dense: slot s of a group is channel s - offsets[pg]); offsets
// (P * ceil(K / gk) + 1). Returns 0, or 1 when out of memory, 2 for an unsupported gk.
int tw_conv_f32(const float* x, int64_t nb, int64_t c, int64_t h, int64_t w, int64_t sxn, int64_t sxc, int64_t sxh,
                int64_t sxw, int64_t ph, int64_t pw, const float* values, const int32_t* indices,
                const int32_t* offsets, int64_t k, int64_t gk, int dense, const float* bias, int relu, float* y,
                int64_t syn, int64_t syk, int64_t syh, int64_t syw, int64_t ho, int64_t wo, int nthreads) {
  Geo g;
  g.nb = nb; g.c = c; g.h = h; g.w = w; g.sxn = sxn; g.sxc = sxc; g.sxh = sxh; g.sxw = sxw; g.ph = ph; g.pw = pw;
  g.k = k; g.gk = gk; g.g = (k + gk - 1) / gk;
  g.ho = ho; g.wo = wo; g.syn = syn; g.syk = syk; g.syh = syh; g.syw = syw;
  g.tiles_h = (ho + M - 1) / M; g.tiles_w = (wo + M - 1) / M; g.t = nb * g.tiles_h * g.tiles_w;
  if (g.t == 0 || k == 0) return 0;
  // Multi-row blocks only for F(4,r): for F(2,r) they measured ~10% slower than flat blocks (the
  // gathers they save are few there, and a 7-tile row wastes 2 of 16 lanes).
  g.rpb = (M == 4 && g.tiles_w < L / 2) ? (int)(L / g.tiles_w) : 0;
  g.n_in = g.n_out = 0;
  if (ROW_BLOCKS && g.rpb > 0) make_plans(g);
  const bool rl = relu != 0;
#define TW_CASE(GKV)                                                                                 \
  if (gk == GKV)                                                                                     \
    return dense ? run<GKV, true>(g, x, values, indices, offsets, bias, rl, y, nthreads)            \
                 : run<GKV, false>(g, x, values, indices, offsets, bias, rl, y, nthreads);
  TW_CASE(16)
  TW_CASE(32)
  TW_CASE(64)
#undef TW_CASE
  return 2;
}

}  // extern "C"
