// phaseedge._hostops: native host-side kernels (contract: DEVELOPERS.md, "Host ops").
//
// Same signatures and the same float32 arithmetic, in the same order, as the numpy
// reference phaseedge/_hostops_numpy.py, so results agree bit for bit. Every argument is
// checked with the GIL held (TypeError / ValueError, never a crash); the work then runs
// with the GIL released so it overlaps inference in other threads, parallel with OpenMP
// over rows (never over tiles, whose footprints overlap).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "half.hpp"

namespace py = pybind11;
using phaseedge::half_t;
using std::int64_t;

namespace {

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// ------------------------------------------------------------------ argument checks
enum class DT { u8, u16, i64, f16, f32, other };

const char* dt_name(DT d) {
    switch (d) {
        case DT::u8: return "uint8";
        case DT::u16: return "uint16";
        case DT::i64: return "int64";
        case DT::f16: return "float16";
        case DT::f32: return "float32";
        default: return "?";
    }
}

DT dtype_of(const py::array& a) {
    static const py::dtype u8 = py::dtype::of<std::uint8_t>(), u16 = py::dtype::of<std::uint16_t>(),
                           i64 = py::dtype::of<int64_t>(), f16("float16"), f32 = py::dtype::of<float>();
    const py::dtype d = a.dtype();
    if (d.equal(u8)) return DT::u8;
    if (d.equal(u16)) return DT::u16;
    if (d.equal(i64)) return DT::i64;
    if (d.equal(f16)) return DT::f16;
    if (d.equal(f32)) return DT::f32;
    return DT::other;
}

std::string shape_str(const py::array& a) {
    return py::str(a.attr("shape")).cast<std::string>();
}

// isinstance, dtype and ndim, with the same messages as the numpy reference.
py::array checked(const char* name, py::handle h, std::initializer_list<DT> allowed, int ndim, DT* got = nullptr) {
    if (!py::isinstance<py::array>(h)) {
        throw py::type_error(std::string(name) + " must be a numpy array, got " +
                             py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>());
    }
    auto a = py::reinterpret_borrow<py::array>(h);
    const DT d = dtype_of(a);
    if (std::find(allowed.begin(), allowed.end(), d) == allowed.end()) {
        std::string names;
        for (DT x : allowed) names += (names.empty() ? "" : "/") + std::string(dt_name(x));
        throw py::type_error(std::string(name) + " must have dtype " + names + ", got " +
                             py::str(a.dtype()).cast<std::string>());
    }
    if (a.ndim() != ndim) {
        throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) +
                              " dimensions, got shape " + shape_str(a));
    }
    if (got) *got = d;
    return a;
}

void need_contiguous(const char* name, const py::array& a) {
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
    }
}

void need_writeable(const char* name, const py::array& a) {
    if (!a.writeable()) throw py::value_error(std::string(name) + " is written in place and must be writeable");
}

void need_shape(const char* name, const py::array& a, std::initializer_list<int64_t> shape, const char* what) {
    int i = 0;
    for (int64_t s : shape) {
        if (a.shape(i++) != s) throw py::value_error(std::string(name) + " must have shape " + what + ", got " + shape_str(a));
    }
}

std::string tup(std::initializer_list<int64_t> v) {
    std::string s = "(";
    int i = 0;
    for (int64_t x : v) s += (i++ ? ", " : "") + std::to_string(x);
    return s + (v.size() == 1 ? ",)" : ")");
}

const int64_t* origins_ptr(py::handle h, int64_t batch) {
    auto o = checked("origins", h, {DT::i64}, 2);
    if (o.shape(1) != 2 || o.shape(0) != batch) {
        throw py::value_error("origins must have shape [" + std::to_string(batch) + ", 2] (y, x), got " + shape_str(o));
    }
    need_contiguous("origins", o);
    return static_cast<const int64_t*>(o.data());
}

// Symmetric mirroring (numpy.pad 'symmetric'), valid at any distance from the frame.
inline int64_t mirror(int64_t i, int64_t n) {
    int64_t m = i % (2 * n);
    if (m < 0) m += 2 * n;
    return m >= n ? 2 * n - 1 - m : m;
}

// ------------------------------------------------------------------ gather_tiles
template <typename In, typename Out>
void gather_kernel(const In* frame, int64_t h, int64_t w, const int64_t* org, int64_t batch, int64_t t,
                   float lo, float scale, Out* out) {
    auto norm = [lo, scale](In x) {
        float v = (phaseedge::to_float(x) - lo) * scale;
        return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);  // NaN stays NaN, like np.clip
    };
#pragma omp parallel
    {
        // float16 output goes through a float row: GCC vectorises clip and conversion as two
        // loops, not as one
        std::vector<float> row(static_cast<size_t>(t));
#pragma omp for collapse(2) schedule(dynamic, 16)
        for (int64_t b = 0; b < batch; ++b) {
            for (int64_t ky = 0; ky < t; ++ky) {
                const int64_t y0 = org[2 * b], x0 = org[2 * b + 1];
                const In* src = frame + mirror(y0 + ky, h) * w;
                Out* dst = out + (b * t + ky) * t;
                float* v = std::is_same_v<Out, float> ? reinterpret_cast<float*>(dst) : row.data();
                const int64_t a = std::clamp<int64_t>(-x0, 0, t);     // first column inside the frame
                const int64_t e = std::clamp<int64_t>(w - x0, a, t);  // end of the columns inside
                for (int64_t kx = 0; kx < a; ++kx) v[kx] = norm(src[mirror(x0 + kx, w)]);
                const In* s = src + x0;
                for (int64_t kx = a; kx < e; ++kx) v[kx] = norm(s[kx]);
                for (int64_t kx = e; kx < t; ++kx) v[kx] = norm(src[mirror(x0 + kx, w)]);
                if constexpr (!std::is_same_v<Out, float>) {
                    for (int64_t kx = 0; kx < t; ++kx) phaseedge::store(dst + kx, v[kx]);
                }
            }
        }
    }
}

template <typename In>
void gather_dispatch_out(DT od, const void* frame, int64_t h, int64_t w, const int64_t* org, int64_t batch,
                         int64_t t, float lo, float scale, void* out) {
    const In* f = static_cast<const In*>(frame);
    if (od == DT::f16) gather_kernel(f, h, w, org, batch, t, lo, scale, static_cast<half_t*>(out));
    else gather_kernel(f, h, w, org, batch, t, lo, scale, static_cast<float*>(out));
}

void gather_tiles(py::handle frame_h, py::handle origins_h, int64_t tile, double lo, double hi, py::handle out_h) {
    DT fd, od;
    auto frame = checked("frame", frame_h, {DT::u8, DT::u16, DT::f32}, 2, &fd);
    need_contiguous("frame", frame);
    auto out = checked("out", out_h, {DT::f16, DT::f32}, 4, &od);
    need_contiguous("out", out);
    need_writeable("out", out);
    if (tile < 1) throw py::value_error("tile must be >= 1, got " + std::to_string(tile));
    const int64_t batch = out.shape(0);
    if (out.shape(1) != 1 || out.shape(2) != tile || out.shape(3) != tile) {
        const std::string t = std::to_string(tile);
        throw py::value_error("out must have shape [B, 1, " + t + ", " + t + "], got " + shape_str(out));
    }
    const int64_t* org = origins_ptr(origins_h, batch);
    if (!(std::isfinite(lo) && std::isfinite(hi)) || hi <= lo) {
        throw py::value_error("need finite lo < hi, got lo=" + py::str(py::float_(lo)).cast<std::string>() +
                              ", hi=" + py::str(py::float_(hi)).cast<std::string>());
    }
    const int64_t h = frame.shape(0), w = frame.shape(1);
    if (h < 1 || w < 1) throw py::value_error("frame is empty: shape " + shape_str(frame));
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t y0 = org[2 * b], x0 = org[2 * b + 1];
        if (!(-tile < y0 && y0 < h && -tile < x0 && x0 < w)) {
            throw py::value_error("origins[" + std::to_string(b) + "] = (" + std::to_string(y0) + ", " +
                                  std::to_string(x0) + "): tile " + std::to_string(tile) +
                                  " does not overlap frame " + std::to_string(h) + "x" + std::to_string(w));
        }
    }
    const float lo32 = static_cast<float>(lo), scale32 = static_cast<float>(1.0 / (hi - lo));
    const void* f = frame.data();
    void* o = out.mutable_data();
    py::gil_scoped_release nogil;
    switch (fd) {
        case DT::u8: gather_dispatch_out<std::uint8_t>(od, f, h, w, org, batch, tile, lo32, scale32, o); break;
        case DT::u16: gather_dispatch_out<std::uint16_t>(od, f, h, w, org, batch, tile, lo32, scale32, o); break;
        default: gather_dispatch_out<float>(od, f, h, w, org, batch, tile, lo32, scale32, o); break;
    }
}

// ------------------------------------------------------------------ accumulate
template <typename P>
void accumulate_kernel(float* acc, float* wsum, int64_t n, int64_t h, int64_t w, const P* probs, int64_t batch,
                       int64_t t, const int64_t* org, const float* wy, const float* wx) {
    // One thread owns each band row; tiles are visited in batch order, so every pixel sums
    // its contributions in exactly the numpy reference's order.
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t r = 0; r < h; ++r) {
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t y0 = org[2 * b], x0 = org[2 * b + 1];
            const int64_t ky = r - y0;
            const int64_t xs = std::max<int64_t>(x0, 0), xe = std::min<int64_t>(x0 + t, w);
            if (ky < 0 || ky >= t || xs >= xe) continue;
            const int64_t len = xe - xs, kx0 = xs - x0;
            const float wyv = wy[b * t + ky];
            const float* wxb = wx + b * t + kx0;
            float* ws = wsum + r * w + xs;
            for (int64_t i = 0; i < len; ++i) ws[i] += wyv * wxb[i];
            for (int64_t c = 0; c < n; ++c) {
                float* a = acc + (c * h + r) * w + xs;
                const P* p = probs + ((b * n + c) * t + ky) * t + kx0;
                for (int64_t i = 0; i < len; ++i) a[i] += phaseedge::to_float(p[i]) * (wyv * wxb[i]);
            }
        }
    }
}

void accumulate(py::handle acc_h, py::handle wsum_h, py::handle probs_h, py::handle origins_h, py::handle wy_h,
                py::handle wx_h) {
    auto acc = checked("acc", acc_h, {DT::f32}, 3);
    need_contiguous("acc", acc);
    need_writeable("acc", acc);
    const int64_t n = acc.shape(0), h = acc.shape(1), w = acc.shape(2);
    auto wsum = checked("wsum", wsum_h, {DT::f32}, 2);
    need_contiguous("wsum", wsum);
    need_writeable("wsum", wsum);
    need_shape("wsum", wsum, {h, w}, (tup({h, w}) + " like acc's rows").c_str());
    DT pd;
    auto probs = checked("probs", probs_h, {DT::f16, DT::f32}, 4, &pd);
    need_contiguous("probs", probs);
    const int64_t batch = probs.shape(0), t = probs.shape(2);
    if (probs.shape(1) != n || probs.shape(3) != t) {
        throw py::value_error("probs must have shape [B, " + std::to_string(n) + ", T, T], got " + shape_str(probs));
    }
    const int64_t* org = origins_ptr(origins_h, batch);
    const float* wptr[2];
    const char* names[2] = {"wy", "wx"};
    py::handle hs[2] = {wy_h, wx_h};
    for (int i = 0; i < 2; ++i) {
        auto a = checked(names[i], hs[i], {DT::f32}, 2);
        need_contiguous(names[i], a);
        need_shape(names[i], a, {batch, t}, tup({batch, t}).c_str());
        wptr[i] = static_cast<const float*>(a.data());
    }
    if (acc.data() == wsum.data()) throw py::value_error("acc and wsum must be different arrays");
    float* ap = static_cast<float*>(acc.mutable_data());
    float* wp = static_cast<float*>(wsum.mutable_data());
    const void* pp = probs.data();
    py::gil_scoped_release nogil;
    if (pd == DT::f16) accumulate_kernel(ap, wp, n, h, w, static_cast<const half_t*>(pp), batch, t, org, wptr[0], wptr[1]);
    else accumulate_kernel(ap, wp, n, h, w, static_cast<const float*>(pp), batch, t, org, wptr[0], wptr[1]);
}

// ------------------------------------------------------------------ finish
// Returns the flat index (r * w + x) of the first pixel without weight, or -1.
template <typename PO>
int64_t finish_kernel(const float* acc, const float* wsum, int64_t n, int64_t h, int64_t w, int64_t rows,
                      std::uint8_t* labels, std::vector<int64_t>& partial, const float* cw, PO* pout,
                      int64_t pout_cstride) {
    int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel reduction(min : first_bad)
    {
        int64_t* cnt = partial.data() + thread_id() * n;
        // per-row scratch; each loop below is simple enough for GCC to vectorise
        std::vector<float> p(static_cast<size_t>(w)), best(static_cast<size_t>(w));
        std::vector<std::int32_t> lab(static_cast<size_t>(w));
#pragma omp for schedule(dynamic, 8)
        for (int64_t r = 0; r < rows; ++r) {
            const float* ws = wsum + r * w;
            int uncovered = 0;
            for (int64_t x = 0; x < w; ++x) uncovered |= !(ws[x] > 0.0f);
            if (uncovered) {
                for (int64_t x = 0; x < w; ++x) {
                    if (!(ws[x] > 0.0f)) {
                        first_bad = std::min(first_bad, r * w + x);
                        break;
                    }
                }
            }
            for (int64_t c = 0; c < n; ++c) {
                const float* a = acc + (c * h + r) * w;
                for (int64_t x = 0; x < w; ++x) p[x] = a[x] / ws[x];
                if (pout) {
                    PO* po = pout + c * pout_cstride + r * w;
                    for (int64_t x = 0; x < w; ++x) phaseedge::store(po + x, p[x]);
                }
                if (cw) {
                    const float k = cw[c];
                    for (int64_t x = 0; x < w; ++x) p[x] *= k;
                }
                if (c == 0) {
                    std::copy(p.begin(), p.end(), best.begin());
                    std::fill(lab.begin(), lab.end(), 0);
                } else {
                    const std::int32_t ci = static_cast<std::int32_t>(c);
                    const float* __restrict pp = p.data();
                    float* __restrict bp = best.data();
                    std::int32_t* __restrict lp = lab.data();
                    for (int64_t x = 0; x < w; ++x) {
                        // strict >: ties keep the lowest class, like np.argmax
                        const std::int32_t more = -static_cast<std::int32_t>(pp[x] > bp[x]);
                        bp[x] = std::max(bp[x], pp[x]);  // = more ? pp[x] : bp[x]
                        lp[x] = (ci & more) | (lp[x] & ~more);
                    }
                }
            }
            std::uint8_t* out = labels + r * w;
            for (int64_t x = 0; x < w; ++x) out[x] = static_cast<std::uint8_t>(lab[x]);
            for (int64_t x = 0; x < w; ++x) ++cnt[lab[x]];
        }
    }
    return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

void finish(py::handle acc_h, py::handle wsum_h, int64_t rows, py::handle labels_h, py::handle counts_h,
            py::object class_weights, py::object probs_out) {
    auto acc = checked("acc", acc_h, {DT::f32}, 3);
    need_contiguous("acc", acc);
    const int64_t n = acc.shape(0), h = acc.shape(1), w = acc.shape(2);
    auto wsum = checked("wsum", wsum_h, {DT::f32}, 2);
    need_contiguous("wsum", wsum);
    need_shape("wsum", wsum, {h, w}, (tup({h, w}) + " like acc's rows").c_str());
    if (rows < 0 || rows > h) {
        throw py::value_error("rows must be in [0, " + std::to_string(h) + "], got " + std::to_string(rows));
    }
    if (n < 1 || n > 256) throw py::value_error("uint8 labels hold 1..256 classes, acc has " + std::to_string(n));
    auto labels = checked("labels", labels_h, {DT::u8}, 2);
    need_contiguous("labels", labels);
    need_writeable("labels", labels);
    need_shape("labels", labels, {rows, w}, tup({rows, w}).c_str());
    auto counts = checked("counts", counts_h, {DT::i64}, 1);
    need_contiguous("counts", counts);
    need_writeable("counts", counts);
    need_shape("counts", counts, {n}, tup({n}).c_str());
    const float* cw = nullptr;
    if (!class_weights.is_none()) {
        auto a = checked("class_weights", class_weights, {DT::f32}, 1);
        need_contiguous("class_weights", a);
        need_shape("class_weights", a, {n}, tup({n}).c_str());
        cw = static_cast<const float*>(a.data());
    }
    void* po = nullptr;
    DT pod = DT::f32;
    int64_t po_cstride = 0;
    if (!probs_out.is_none()) {
        auto a = checked("probs_out", probs_out, {DT::f16, DT::f32}, 3, &pod);
        need_writeable("probs_out", a);
        need_shape("probs_out", a, {n, rows, w}, tup({n, rows, w}).c_str());
        const py::ssize_t item = a.itemsize();
        if (a.strides(2) != item || (rows > 1 && a.strides(1) != w * item) || a.strides(0) < 0 || a.strides(0) % item) {
            throw py::value_error("probs_out must have C-contiguous rows (last two axes), got strides " +
                                  py::str(a.attr("strides")).cast<std::string>());
        }
        po = a.mutable_data();
        po_cstride = a.strides(0) / item;
    }
    if (rows == 0) return;
    const float* ap = static_cast<const float*>(acc.data());
    const float* wp = static_cast<const float*>(wsum.data());
    auto* lp = static_cast<std::uint8_t*>(labels.mutable_data());
    auto* cp = static_cast<int64_t*>(counts.mutable_data());
    int64_t bad;
    {
        std::vector<int64_t> partial(static_cast<size_t>(max_threads() * n), 0);
        py::gil_scoped_release nogil;
        if (po && pod == DT::f16) bad = finish_kernel(ap, wp, n, h, w, rows, lp, partial, cw, static_cast<half_t*>(po), po_cstride);
        else bad = finish_kernel(ap, wp, n, h, w, rows, lp, partial, cw, static_cast<float*>(po), po_cstride);
        if (bad < 0) {
            for (int t = 0; t < max_threads(); ++t)
                for (int64_t c = 0; c < n; ++c) cp[c] += partial[static_cast<size_t>(t * n + c)];
        }
    }
    if (bad >= 0) {
        throw py::value_error("pixel (row " + std::to_string(bad / w) + ", col " + std::to_string(bad % w) +
                              ") of the band has no weight: no tile covered it");
    }
}

}  // namespace

PYBIND11_MODULE(_hostops, m) {
    m.doc() = "Native host-side kernels of phaseedge (see phaseedge.hostops for the documented API).";
    m.def("gather_tiles", &gather_tiles, py::arg("frame"), py::arg("origins"), py::arg("tile"), py::arg("lo"),
          py::arg("hi"), py::arg("out"));
    m.def("accumulate", &accumulate, py::arg("acc"), py::arg("wsum"), py::arg("probs"), py::arg("origins"),
          py::arg("wy"), py::arg("wx"));
    m.def("finish", &finish, py::arg("acc"), py::arg("wsum"), py::arg("rows"), py::arg("labels"), py::arg("counts"),
          py::arg("class_weights") = py::none(), py::arg("probs_out") = py::none());
    m.def("max_threads", &max_threads, "OpenMP threads the kernels use (1 when built without OpenMP).");
}
