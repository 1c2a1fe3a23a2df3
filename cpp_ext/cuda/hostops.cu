// CUDA versions of the host ops (DEVELOPERS.md, "Host ops"), for the TensorRT path: tiles
// are cut from a frame already on the device and stitched there, so only the frame goes
// up and labels + counts come back.
//
// Same arithmetic as the numpy reference, in the same order, with explicitly rounded
// intrinsics (__fadd_rn & co. are never contracted into FMAs), so results match the CPU
// bit for bit. Kernels are extern "C" so the loader (phaseedge/hostops_cuda.py) finds them
// by name in the fatbin/PTX that setup.py builds with nvcc.
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ long long mirror(long long i, long long n) {
    long long m = i % (2 * n);
    if (m < 0) m += 2 * n;
    return m >= n ? 2 * n - 1 - m : m;
}

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, long long i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const uint8_t* p, long long i) { return static_cast<float>(p[i]); }
__device__ __forceinline__ float load(const uint16_t* p, long long i) { return static_cast<float>(p[i]); }

__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, long long i, float v) { p[i] = __float2half_rn(v); }

// grid (ceil(t / blockDim.x), t, batch): one thread per output pixel
template <typename In, typename Out>
__device__ void gather(const In* frame, int h, int w, const long long* origins, int t, float lo, float scale,
                       Out* out) {
    const int kx = blockIdx.x * blockDim.x + threadIdx.x;
    const int ky = blockIdx.y;
    const int b = blockIdx.z;
    if (kx >= t) return;
    const long long y = mirror(origins[2 * b] + ky, h);
    const long long x = mirror(origins[2 * b + 1] + kx, w);
    float v = __fmul_rn(__fsub_rn(load(frame, y * w + x), lo), scale);
    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);  // NaN stays NaN, like np.clip
    store(out, (static_cast<long long>(b) * t + ky) * t + kx, v);
}

// grid (ceil(w / blockDim.x), h): one thread per band pixel, tiles summed in batch order
template <typename P>
__device__ void accumulate(float* acc, float* wsum, int n, int h, int w, const P* probs, int batch, int t,
                           const long long* origins, const float* wy, const float* wx) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (x >= w) return;
    const long long px = static_cast<long long>(r) * w + x;
    float ws = wsum[px];
    for (int b = 0; b < batch; ++b) {
        const long long ky = r - origins[2 * b], kx = x - origins[2 * b + 1];
        if (ky >= 0 && ky < t && kx >= 0 && kx < t) ws = __fadd_rn(ws, __fmul_rn(wy[b * t + ky], wx[b * t + kx]));
    }
    wsum[px] = ws;
    for (int c = 0; c < n; ++c) {
        float a = acc[static_cast<long long>(c) * h * w + px];
        for (int b = 0; b < batch; ++b) {
            const long long ky = r - origins[2 * b], kx = x - origins[2 * b + 1];
            if (ky >= 0 && ky < t && kx >= 0 && kx < t) {
                const float wt = __fmul_rn(wy[b * t + ky], wx[b * t + kx]);
                const float p = load(probs, ((static_cast<long long>(b) * n + c) * t + ky) * t + kx);
                a = __fadd_rn(a, __fmul_rn(p, wt));
            }
        }
        acc[static_cast<long long>(c) * h * w + px] = a;
    }
}

// grid (ceil(w / blockDim.x), rows), dynamic shared memory n * 4 bytes for the block's counts.
// counts is int64 on the host; adding non-negative values as unsigned 64-bit is the same.
// A pixel with no weight sets *bad to the smallest such flat index (r * w + x); the caller
// initialises *bad to UINT64_MAX and raises when it changed (counts then include the band).
template <typename PO>
__device__ void finish(const float* acc, const float* wsum, int n, int h, int w, uint8_t* labels,
                       unsigned long long* counts, unsigned long long* bad, const float* class_weights,
                       PO* probs_out, long long probs_out_cstride) {
    extern __shared__ unsigned int hist[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (x < w) {
        const long long px = static_cast<long long>(r) * w + x;
        const float ws = wsum[px];
        if (!(ws > 0.0f)) atomicMin(bad, static_cast<unsigned long long>(px));
        float best = 0.0f;
        int label = 0;
        for (int c = 0; c < n; ++c) {
            const float p = __fdiv_rn(acc[static_cast<long long>(c) * h * w + px], ws);
            if (probs_out) store(probs_out, c * probs_out_cstride + px, p);
            const float s = class_weights ? __fmul_rn(p, class_weights[c]) : p;
            if (c == 0 || s > best) {  // strict: ties keep the lowest class, like np.argmax
                best = s;
                label = c;
            }
        }
        labels[px] = static_cast<uint8_t>(label);
        atomicAdd(&hist[label], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (hist[i]) atomicAdd(&counts[i], static_cast<unsigned long long>(hist[i]));
    }
}

}  // namespace

#define PE_GATHER(NAME, IN, OUT)                                                                          \
    extern "C" __global__ void NAME(const IN* frame, int h, int w, const long long* origins, int t,       \
                                    float lo, float scale, OUT* out) {                                    \
        gather(frame, h, w, origins, t, lo, scale, out);                                                  \
    }
PE_GATHER(pe_gather_u8_f16, uint8_t, __half)
PE_GATHER(pe_gather_u16_f16, uint16_t, __half)
PE_GATHER(pe_gather_f32_f16, float, __half)
PE_GATHER(pe_gather_u8_f32, uint8_t, float)
PE_GATHER(pe_gather_u16_f32, uint16_t, float)
PE_GATHER(pe_gather_f32_f32, float, float)

#define PE_ACCUMULATE(NAME, P)                                                                            \
    extern "C" __global__ void NAME(float* acc, float* wsum, int n, int h, int w, const P* probs,         \
                                    int batch, int t, const long long* origins, const float* wy,          \
                                    const float* wx) {                                                    \
        accumulate(acc, wsum, n, h, w, probs, batch, t, origins, wy, wx);                                 \
    }
PE_ACCUMULATE(pe_accumulate_f16, __half)
PE_ACCUMULATE(pe_accumulate_f32, float)

#define PE_FINISH(NAME, PO)                                                                               \
    extern "C" __global__ void NAME(const float* acc, const float* wsum, int n, int h, int w,            \
                                    uint8_t* labels, unsigned long long* counts, unsigned long long* bad, \
                                    const float* class_weights, PO* probs_out, long long probs_out_cstride) { \
        finish(acc, wsum, n, h, w, labels, counts, bad, class_weights, probs_out, probs_out_cstride);     \
    }
PE_FINISH(pe_finish_f16, __half)
PE_FINISH(pe_finish_f32, float)
