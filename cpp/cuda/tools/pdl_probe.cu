// Probe (not part of the build; session 26): how long after a primary
// grid's last block ends does griddepcontrol.wait return in its
// programmatic dependent, and does that grow with the primary's blocks,
// threads or writes? (Written when a timeline mark placed after the float
// convolution's first copies were issued put its wait at 3.9-4.1 us after
// the fused packing launch; a mark right after the wait put it at ~1 us.
// This probe: 0.5-0.8 us where the dependent's blocks are resident.
// NOTES-gpu.md S26-10 to S26-12.)
//
// The primary: G blocks of T threads; each calls launch_dependents at its
// start, spins W ns, writes B bytes a block (coalesced), and records its
// end (globaltimer, after a __syncthreads). The secondary: one block an SM
// of 256 threads holding S bytes of shared memory (as the convolution
// does), launched with programmatic stream serialization; thread 0 records
// its start, calls griddepcontrol.wait, records the return. (The
// secondary may launch once every primary block has called
// launch_dependents; its blocks become resident where an SM has room.)
//
// Prints, per case, over secondary blocks, the median and the max of (wait
// return - the primary's last block end) and the median of (secondary
// block start - that end), us; each the median over 10 repetitions.
//
// nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -o pdl_probe pdl_probe.cu
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>
#include "probe_util.cuh"



__global__ void primary(unsigned long long* ends, uint4* sink, int wait_ns, int words) {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const unsigned long long t0 = gtimer();
  while (gtimer() - t0 < (unsigned long long)wait_ns) {
  }
  uint4* dst = sink + (long long)blockIdx.x * words;
  for (int i = threadIdx.x; i < words; i += blockDim.x) dst[i] = make_uint4(i, blockIdx.x, 1, 2);
  __syncthreads();
  if (threadIdx.x == 0) ends[blockIdx.x] = gtimer();
}

__global__ void secondary(unsigned long long* t) {
  extern __shared__ unsigned char sm[];
  if (threadIdx.x == 0) {
    t[2 * blockIdx.x] = gtimer();
    sm[0] = 1;
  }
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (threadIdx.x == 0) t[2 * blockIdx.x + 1] = gtimer() + sm[0] - 1;
}

int main() {
  const ProbeDevice pd = probe_device();
  const int sms = pd.sms, optin = pd.optin;
  CK(cudaFuncSetAttribute(secondary, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  const int gmax = 8192;
  unsigned long long *ends = nullptr, *st = nullptr;
  uint4* sink = nullptr;
  CK(cudaMalloc(&ends, gmax * 8));
  CK(cudaMalloc(&st, 2 * sms * 8));
  CK(cudaMalloc(&sink, 64ull << 20));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  std::vector<unsigned long long> he(gmax), hs(2 * sms);
  std::printf("%6s %5s %7s %9s %8s | %10s %10s %12s\n", "blocks", "thr", "spin_ns", "bytes/blk", "smem",
              "wait-end", "max", "sec.start-end");
  struct Case { int g, t, spin, words, smem; };
  const Case cases[] = {
      {132, 256, 2000, 0, 200 << 10},    {132, 1024, 2000, 0, 200 << 10},
      {1632, 256, 500, 32, 200 << 10},   {1632, 1024, 500, 32, 200 << 10},
      {6304, 256, 500, 16, 200 << 10},   {1632, 256, 500, 1024, 200 << 10},
      {1632, 256, 500, 32, 16 << 10},    {64, 1024, 3000, 0, 200 << 10},
  };
  for (const Case& c : cases) {
    std::vector<double> med, mx, sstart;
    for (int rep = 0; rep < 11; ++rep) {
      primary<<<c.g, c.t, 0, s>>>(ends, sink, c.spin, c.words);
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(sms);
      cfg.blockDim = dim3(256);
      cfg.dynamicSmemBytes = (size_t)c.smem;
      cfg.stream = s;
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      at[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = at;
      cfg.numAttrs = 1;
      CK(cudaLaunchKernelEx(&cfg, secondary, st));
      CK(cudaStreamSynchronize(s));
      CK(cudaGetLastError());
      CK(cudaMemcpy(he.data(), ends, c.g * 8, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(hs.data(), st, 2 * sms * 8, cudaMemcpyDeviceToHost));
      if (rep == 0) continue;  // (warm-up)
      const unsigned long long last = *std::max_element(he.begin(), he.begin() + c.g);
      std::vector<double> w, ss;
      for (int b = 0; b < sms; ++b) {
        w.push_back(((double)hs[2 * b + 1] - (double)last) / 1000.0);
        ss.push_back(((double)hs[2 * b] - (double)last) / 1000.0);
      }
      std::sort(w.begin(), w.end());
      std::sort(ss.begin(), ss.end());
      med.push_back(w[sms / 2]);
      mx.push_back(w.back());
      sstart.push_back(ss[sms / 2]);
    }
    std::sort(med.begin(), med.end());
    std::sort(mx.begin(), mx.end());
    std::sort(sstart.begin(), sstart.end());
    std::printf("%6d %5d %7d %9d %8d | %10.2f %10.2f %12.2f\n", c.g, c.t, c.spin, c.words * 16, c.smem,
                med[med.size() / 2], mx[mx.size() / 2], sstart[sstart.size() / 2]);
  }
  return 0;
}
