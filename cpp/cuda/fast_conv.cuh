// The fast popcount convolution (XNOR / AND, groups = 1, C % 128 == 0):
// a persistent implicit GEMM on the b1 tensor cores. Included by
// binconv_kernels.cu inside its anonymous namespace (it uses that file's
// cp.async / ldmatrix / MMA helpers and packed_threshold).
//
// Layout of the work. A block owns one tile of kFastBN output channels for
// the whole launch: their packed weights (read straight from the operand,
// [O][KH][KW][C/32] words, K contiguous per channel) stay in shared memory,
// together with the per-channel constants of the epilogue. It then walks a
// strided list of M tiles (kFastBM consecutive output pixels in (n, y, x)
// order). For each M tile it copies, with cp.async and one tile ahead, the
// input rows that tile needs into "slots": slot (dy, j) is input row
// y_j * sh + dy * dh - pt of output row j of the tile, every column the
// window can reach, zero-filled outside the image. The A operand of tap
// (dy, dx) and output pixel (j, x) is then pixel x * sw + dx * dw of slot
// (dy, j): every lane of an ldmatrix gives its own row address, so the
// implicit im2col costs one add per fragment, and each input word is copied
// from global memory KH times per tile instead of KH * KW times.
//
// K order is (tap, 16-byte chunk of channels): an MMA k-step (256 bits) is
// chunks 2i and 2i + 1, possibly of two taps (C = 128). An odd chunk count
// is padded with a zero chunk on both operands.
//
// Exactness. The MMA gives P = sum over valid taps of popc(x AND w) (padded
// taps are zero words). With V valid taps, X1 = sum of popc(x) over them and
// W1valid/W1all the popcount of o's weights over the valid / all taps:
//   XNOR: acc = 4P + [V Cg - pv (T - V) Cg - 2 X1] + [2 pv W1all - (2 + 2 pv) W1valid]
//   AND:  acc = P + [pv (W1all - W1valid)]
// The first bracket depends on the row only; the second on the column and on
// the row's valid-tap box. Boxes come in few classes (top/bottom/left/right
// borders and the interior), listed by the host; the block tabulates the
// column term per class once.

constexpr int kFastThreads = 256;
constexpr int kFastBM = 128;  // output pixels per tile: 2 warps x 64
constexpr int kFastBN = 128;  // output channels per tile: 4 warps x 32
constexpr int kMaxCls = 8;    // distinct valid-tap ranges per axis

struct FastArgs {
  const uint4* x;     // packed x: [N*H*W][p] chunks of 16 bytes
  const uint4* wt;    // weights: [O][kc] chunks
  const float* aimg;  // mean |x'| per pixel (float x with beta), else null
  const float* osc;
  const float* obias;
  void* out;
  long long m;  // N * Ho * Wo
  int n, h, w, ho, wo, o, cg;
  int kh, kw, sh, sw, dh, dw, pt, pl;
  int t, p, logp, kc, ks;  // taps, chunks per pixel, log2 p, K chunks, K steps
  int swz_shift, swz_mask;
  int rmax, wslot;  // output rows a tile can touch (bound); pixels per slot
  int pitch_b;      // chunks per weight row in shared memory (odd)
  int mtiles, ntiles;
  int type, pv, beta, x_packed, act, out_packed, thr;
  float slope;
  int amin, amax;
  int ncy, ncx, cls_int;  // box classes per axis; interior class or -1
  int cy_a[kMaxCls], cy_b[kMaxCls], cx_c[kMaxCls], cx_d[kMaxCls];
};

// Shared-memory carve-up, in bytes; host and device use the same function.
struct FastSmem {
  int b, a0, a1, zero, ktab, colterm, thr, rows, total;
};
__host__ __device__ inline FastSmem fast_smem(int pitch_b, int a_chunks, int ks, int ncls) {
  FastSmem s;
  int off = 0;
  s.b = off;
  off += kFastBN * pitch_b * 16;
  s.a0 = off;
  off += a_chunks * 16;
  s.a1 = off;
  off += a_chunks * 16;
  s.zero = off;
  off += 16;
  s.ktab = off;
  off += 2 * ks * 8;
  s.colterm = off;
  off += ncls * kFastBN * 4;
  s.thr = off;
  off += kFastBN * 8;
  off = (off + 15) & ~15;
  s.rows = off;
  off += kFastBM * 16;
  s.total = off;
  return s;
}

// Chunk position of (slot pixel, channel chunk): chunks are XOR-swizzled
// inside a pixel so that the 8 consecutive pixels of one ldmatrix phase hit
// distinct 16-byte bank groups.
__device__ __forceinline__ int fast_chunk(const FastArgs& a, int spx, int c) {
  return spx * a.p + (c ^ ((spx >> a.swz_shift) & a.swz_mask));
}

__global__ void __launch_bounds__(kFastThreads, 1) fast_conv_kernel(FastArgs a) {
  extern __shared__ __align__(16) unsigned char fsm[];
  const int ncls = a.ncy * a.ncx;
  const int slots = a.rmax * a.kh;
  const int a_chunks = slots * a.wslot * a.p;
  const FastSmem L = fast_smem(a.pitch_b, a_chunks, a.ks, ncls);
  uint4* bs = reinterpret_cast<uint4*>(fsm + L.b);
  uint4* zero = reinterpret_cast<uint4*>(fsm + L.zero);
  int2* ktab = reinterpret_cast<int2*>(fsm + L.ktab);
  int* colterm = reinterpret_cast<int*>(fsm + L.colterm);
  int2* thr = reinterpret_cast<int2*>(fsm + L.thr);
  int4* rows = reinterpret_cast<int4*>(fsm + L.rows);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nt = blockIdx.x % a.ntiles;
  const int mstep = gridDim.x / a.ntiles;
  const int n0 = nt * kFastBN;

  // ---- weights of this block's channels (zero rows past O), the K table
  for (int q = tid; q < kFastBN * a.kc; q += kFastThreads) {
    const int r = q / a.kc, k = q - r * a.kc;
    const int o = n0 + r;
    const bool ok = o < a.o;
    cp_async<16>(bs + r * a.pitch_b + k, ok ? a.wt + (long long)o * a.kc + k : a.wt, ok);
  }
  cp_async_commit();
  if (2 * a.ks > a.kc)
    for (int r = tid; r < kFastBN; r += kFastThreads) bs[r * a.pitch_b + a.kc] = make_uint4(0, 0, 0, 0);
  if (tid == 0) *zero = make_uint4(0, 0, 0, 0);
  for (int k = tid; k < 2 * a.ks; k += kFastThreads) {
    int2 e = make_int2(0, -1);  // padding chunk: the zero chunk
    if (k < a.kc) {
      const int tap = k >> a.logp, c = k & (a.p - 1);
      const int dy = tap / a.kw, dx = tap - dy * a.kw;
      e = make_int2(dy * a.rmax * a.wslot + dx * a.dw, c);
    }
    ktab[k] = e;
  }

  // ---- input slots of one M tile
  auto load_tile = [&](int buf, int mt) {
    uint4* as = reinterpret_cast<uint4*>(fsm + (buf ? L.a1 : L.a0));
    const long long m0 = (long long)mt * kFastBM;
    const long long row0 = m0 / a.wo;
    const int per_slot = a.wslot * a.p;
    for (int s = warp; s < slots; s += kFastThreads / 32) {
      const int dy = s / a.rmax, j = s - dy * a.rmax;
      const long long rg = row0 + j;
      const long long img = rg / a.ho;
      const int y = (int)(rg - img * a.ho);
      const int iy = y * a.sh + dy * a.dh - a.pt;
      const bool rowok = img < a.n && iy >= 0 && iy < a.h;
      const uint4* src_row = a.x + ((img * a.h + (rowok ? iy : 0)) * a.w) * a.p;
      for (int q = lane; q < per_slot; q += 32) {
        const int px = q >> a.logp, c = q & (a.p - 1);
        const int ix = px - a.pl;
        const bool ok = rowok && ix >= 0 && ix < a.w;
        const int spx = s * a.wslot + px;
        cp_async<16>(as + fast_chunk(a, spx, c), ok ? src_row + (long long)ix * a.p + c : a.x, ok);
      }
    }
  };

  const int mt0 = blockIdx.x / a.ntiles;
  if (mt0 < a.mtiles) load_tile(0, mt0);
  cp_async_commit();
  cp_async_wait<1>();  // the weights
  __syncthreads();

  // ---- per-channel constants: thresholds, and the column term per box class
  if (tid < kFastBN) {
    const int col = tid, o = n0 + col;
    const uint4* row = bs + col * a.pitch_b;
    int w1all = 0;
    for (int k = 0; k < a.kc; ++k) {
      const uint4 v = row[k];
      w1all += __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
    }
    for (int cy = 0; cy < a.ncy; ++cy)
      for (int cx = 0; cx < a.ncx; ++cx) {
        int w1v = 0;
        for (int dy = a.cy_a[cy]; dy < a.cy_b[cy]; ++dy)
          for (int dx = a.cx_c[cx]; dx < a.cx_d[cx]; ++dx)
            for (int c = 0; c < a.p; ++c) {
              const uint4 v = row[((dy * a.kw + dx) << a.logp) + c];
              w1v += __popc(v.x) + __popc(v.y) + __popc(v.z) + __popc(v.w);
            }
        const int term = a.type == XNOR ? 2 * a.pv * w1all - (2 + 2 * a.pv) * w1v
                                        : a.pv * (w1all - w1v);
        colterm[(cy * a.ncx + cx) * kFastBN + col] = o < a.o ? term : 0;
      }
  } else if (a.thr) {
    const int col = tid - kFastBN, o = n0 + col;
    thr[col] = o < a.o ? packed_threshold(a.osc[o], a.obias[o], a.act, a.slope, a.amin, a.amax)
                       : make_int2(1, 0);
  }
  __syncthreads();

  // The thread's 8 columns: (nf, jj) -> wn + 8 nf + 2 tq + jj.
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
  const int gq = lane >> 2, tq = lane & 3;
  int clo[4][2], chi[4][2], cint[4][2];
  float cs[4][2], cb[4][2];
#pragma unroll
  for (int nf = 0; nf < 4; ++nf)
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {
      const int col = wn + nf * 8 + 2 * tq + jj, o = n0 + col;
      const int oc = min(o, a.o - 1);
      cint[nf][jj] = a.cls_int >= 0 ? colterm[a.cls_int * kFastBN + col] : 0;
      cs[nf][jj] = __ldg(a.osc + oc);
      cb[nf][jj] = __ldg(a.obias + oc);
      if (a.thr) {
        const int2 t2 = thr[col];
        clo[nf][jj] = t2.x;
        chi[nf][jj] = t2.y;
      } else {
        clo[nf][jj] = o < a.o ? 0 : 1;  // used as the column-valid mask below
        chi[nf][jj] = 0;
      }
    }
  const int kmul = a.type == XNOR ? 4 : 1;
  const int half = lane >> 4;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_half = (lane >> 3) & 1;
  const long long ow = (a.o + 31) / 32;

  int buf = 0;
  for (int mt = mt0; mt < a.mtiles; mt += mstep, buf ^= 1) {
    if (mt + mstep < a.mtiles) load_tile(buf ^ 1, mt + mstep);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint4* as = reinterpret_cast<const uint4*>(fsm + (buf ? L.a1 : L.a0));
    const long long m0 = (long long)mt * kFastBM;
    const long long row0 = m0 / a.wo;

    // ---- per-row data: 2 threads per row split the taps
    {
      const int r = tid >> 1, part = tid & 1;
      const long long m = m0 + r;
      const bool valid = m < a.m;
      const long long rg = m / a.wo;
      const int x = (int)(m - rg * a.wo);
      const long long img = rg / a.ho;
      const int y = (int)(rg - img * a.ho);
      const int j = (int)(rg - row0);
      int ba, bb, bc, bd;
      tap_range(y * a.sh - a.pt, a.h, a.kh, a.dh, ba, bb);
      tap_range(x * a.sw - a.pl, a.w, a.kw, a.dw, bc, bd);
      const int v = (bb - ba) * (bd - bc);
      int x1 = 0;
      float asum = 0.0f;
      if (a.type == XNOR || (a.beta && !a.x_packed)) {
        const int base = j * a.wslot + x * a.sw;
        for (int dy = ba; dy < bb; ++dy)
          for (int dx = bc + part; dx < bd; dx += 2) {
            if (a.type == XNOR) {
              const int spx = base + dy * a.rmax * a.wslot + dx * a.dw;
              for (int c = 0; c < a.p; ++c) {
                const uint4 q = as[fast_chunk(a, spx, c)];
                x1 += __popc(q.x) + __popc(q.y) + __popc(q.z) + __popc(q.w);
              }
            }
            if (a.beta && !a.x_packed && valid) {
              const int iy = y * a.sh + dy * a.dh - a.pt, ix = x * a.sw + dx * a.dw - a.pl;
              asum += __ldg(a.aimg + (img * a.h + iy) * a.w + ix);
            }
          }
      }
      x1 += __shfl_xor_sync(kFull, x1, 1);
      asum += __shfl_xor_sync(kFull, asum, 1);
      if (part == 0) {
        int cy = 0, cx = 0;
        for (int i = 0; i < a.ncy; ++i)
          if (a.cy_a[i] == ba && a.cy_b[i] == bb) cy = i;
        for (int i = 0; i < a.ncx; ++i)
          if (a.cx_c[i] == bc && a.cx_d[i] == bd) cx = i;
        const int rowconst =
            a.type == XNOR ? v * a.cg - a.pv * (a.t - v) * a.cg - 2 * x1 : 0;
        float beta = 1.0f;
        if (a.beta) beta = a.x_packed ? (float)v / (float)a.t : asum / (float)a.t;
        rows[r] = make_int4(rowconst, __float_as_int(beta), cy * a.ncx + cx, valid ? 1 : 0);
      }
    }

    // ---- the GEMM: warp tile 64 x 32, 4 x 4 MMAs per K step
    int abase[4];
#pragma unroll
    for (int mf = 0; mf < 4; ++mf) {
      const long long m = m0 + wm + mf * 16 + (lane & 15);
      const long long rg = m / a.wo;
      abase[mf] = (int)(rg - row0) * a.wslot + (int)(m - rg * a.wo) * a.sw;
    }
    int acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][n][r] = 0;
    const uint4* brow0 = bs + (wn + b_row) * a.pitch_b + b_half;
    const uint4* brow1 = brow0 + 16 * a.pitch_b;
#pragma unroll 2
    for (int i = 0; i < a.ks; ++i) {
      const int2 kt = ktab[2 * i + half];
      uint32_t af[4][4], bf[2][4];
#pragma unroll
      for (int mf = 0; mf < 4; ++mf) {
        const int spx = abase[mf] + kt.x;
        ldmatrix_x4(af[mf], kt.y >= 0 ? as + fast_chunk(a, spx, kt.y) : zero);
      }
      ldmatrix_x4(bf[0], brow0 + 2 * i);
      ldmatrix_x4(bf[1], brow1 + 2 * i);
#pragma unroll
      for (int mf = 0; mf < 4; ++mf)
#pragma unroll
        for (int nf = 0; nf < 4; ++nf)
          mma_b1_and(acc[mf][nf], af[mf], bf[nf >> 1][(nf & 1) * 2], bf[nf >> 1][(nf & 1) * 2 + 1]);
    }
    __syncthreads();  // rows[] complete (written before the GEMM by other threads)

    // ---- epilogue straight from the accumulators
#pragma unroll
    for (int mf = 0; mf < 4; ++mf)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = wm + mf * 16 + gq + 8 * hh;
        const int4 rd = rows[r];
        const long long m = m0 + r;
        const float beta = __int_as_float(rd.y);
        const int* ct = colterm + rd.z * kFastBN + wn + 2 * tq;
        const bool interior = rd.z == a.cls_int;
        uint32_t bits = 0;
#pragma unroll
        for (int nf = 0; nf < 4; ++nf) {
          int accv[2];
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
            accv[jj] = kmul * acc[mf][nf][2 * hh + jj] + rd.x +
                       (interior ? cint[nf][jj] : ct[nf * 8 + jj]);
          if (a.thr) {
#pragma unroll
            for (int jj = 0; jj < 2; ++jj)
              if (accv[jj] >= clo[nf][jj] && accv[jj] <= chi[nf][jj])
                bits |= 1u << (nf * 8 + 2 * tq + jj);
            continue;
          }
          float val[2];
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
            val[jj] = epilogue((float)accv[jj], cs[nf][jj], beta, cb[nf][jj], a.act, a.slope);
          if (a.out_packed) {
#pragma unroll
            for (int jj = 0; jj < 2; ++jj)
              if (clo[nf][jj] == 0) bits |= bin_bit(val[jj]) << (nf * 8 + 2 * tq + jj);
          } else if (rd.w) {
            const int o = n0 + wn + nf * 8 + 2 * tq;
            float* dst = static_cast<float*>(a.out) + m * a.o + o;
            if ((a.o & 1) == 0 && o + 1 < a.o) {
              *reinterpret_cast<float2*>(dst) = make_float2(val[0], val[1]);
            } else {
              if (o < a.o) dst[0] = val[0];
              if (o + 1 < a.o) dst[1] = val[1];
            }
          }
        }
        if (a.out_packed) {
          bits |= __shfl_xor_sync(kFull, bits, 1);
          bits |= __shfl_xor_sync(kFull, bits, 2);
          if (tq == 0 && rd.w && n0 + wn < a.o)
            static_cast<uint32_t*>(a.out)[m * ow + (n0 + wn) / 32] = bits;
        }
      }
    __syncthreads();  // this buffer and rows[] are reused two / one tiles on
  }
  cp_async_wait<0>();
}
